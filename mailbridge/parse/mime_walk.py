"""PURE  The MIME tree -> body text and attachments, in document order.

Standard library only. Inline text/plain and text/html are the body; of a
multipart/alternative the text/plain rendition wins, then HTML, and an empty rendition
loses to a non-empty one; the resources of a multipart/related are attachments. A
uuencoded file inside a text body becomes an attachment. A large message's text body is
decoded from at most its first `MAX_TEXT_BYTES` (defect ``BodyTextTruncated``).
"""

from __future__ import annotations

import re
from email.message import Message

from mailbridge.parse.attachment_names import MIMETYPES, extension, filename, sanitize_filename
from mailbridge.parse.headers import TextDecoder
from mailbridge.parse.html import html_to_text
from mailbridge.parse.large import LazyPayload
from mailbridge.parse.mime_payload import payload_bytes, payload_size, uu_decode
from mailbridge.parse.mime_split import iter_parts, raw_payload
from mailbridge.parse.result import Attachment, guard

__all__ = ["MAX_TEXT_BYTES", "Walker"]

MAX_TEXT_BYTES = 4 * 1024 * 1024  # of one text part still in the raw bytes (large messages)

_BODY_TYPES = frozenset({"text/plain", "text/html"})
_MAX_DEPTH = 64
_UU_BLOCK = re.compile(
    r"^begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]+?)[ \t]*\r?\n(.*?)^end[ \t]*$", re.M | re.S
)


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition") or "").split(";", 1)[0].strip().lower()
    return disposition == "attachment" or part.get_filename() is not None


def _rank(part: Message) -> int:
    """How good a rendition is as the body: text/plain 2, HTML 1, anything else 0."""
    ctype = part.get_content_type()
    if ctype.startswith("multipart/"):
        types = {p.get_content_type() for p in iter_parts(part, 200)}
        return 2 if "text/plain" in types else 1 if "text/html" in types else 0
    return 2 if ctype == "text/plain" else 1 if ctype == "text/html" else 0


class Walker:
    """Chooses the body parts and lists the others as attachments, in document order.

    Modes: 'body' (inline text/plain and text/html are body text), 'alt' (an alternative
    not chosen: its inline text is dropped, other parts are attachments) and 'attach'
    (the resources of a multipart/related: every part is an attachment).
    """

    def __init__(
        self, text: TextDecoder, defects: list[str], names: set[str] | None = None
    ) -> None:
        self.text = text
        self.defects = defects
        self.texts: list[str] = []
        self.attachments: list[Attachment] = []
        self.names: set[str] = set(names or ())

    def run(self, msg: Message) -> tuple[str, tuple[Attachment, ...]]:
        self.visit(msg, "body", 0)
        return "\n".join(t for t in self.texts if t).strip(), tuple(self.attachments)

    def visit(self, part: Message, mode: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.defects.append("MimeNestingTooDeep")
            return
        ctype = guard(part.get_content_type, "application/octet-stream", self.defects, "part")
        children = raw_payload(part)
        if ctype.startswith("multipart/"):
            if isinstance(children, list):
                parts = [child for child in children if isinstance(child, Message)]
                self.visit_multipart(part, ctype, parts, mode, depth)
            elif mode == "body":  # the boundary never appears: the text is all there is
                guard(lambda: self.add_text(part, "text/plain"), None, self.defects, "part")
            return
        inline = ctype in _BODY_TYPES and mode != "attach"
        if inline and not guard(lambda: _is_attachment(part), False, self.defects, "part"):
            if mode == "body":
                guard(lambda: self.add_text(part, ctype), None, self.defects, "part")
            return
        self.add_attachment(part, ctype)

    def visit_multipart(
        self, part: Message, ctype: str, parts: list[Message], mode: str, depth: int
    ) -> None:
        if ctype == "multipart/alternative" and mode == "body" and parts:
            self.alternative(parts, depth)
        elif ctype == "multipart/related" and parts:
            root = self.related_root(part, parts)
            for child in parts:
                self.visit(child, mode if child is root else "attach", depth + 1)
        else:
            for child in parts:
                self.visit(child, mode, depth + 1)

    def alternative(self, parts: list[Message], depth: int) -> None:
        """Prefer text/plain, then HTML; an empty rendition loses to a non-empty one."""
        ranked = sorted(parts, key=lambda p: -guard(lambda: _rank(p), 0, self.defects, "part"))
        chosen, trial = ranked[-1], None
        for candidate in ranked:
            trial = Walker(self.text, self.defects, self.names)
            trial.visit(candidate, "body", depth + 1)
            if any(t.strip() for t in trial.texts):
                chosen = candidate
                break
        for child in parts:
            if child is chosen and trial is not None:
                self.texts.extend(trial.texts)
                self.attachments.extend(trial.attachments)
                self.names |= trial.names
            else:
                self.visit(child, "alt", depth + 1)

    @staticmethod
    def related_root(part: Message, parts: list[Message]) -> Message:
        start = str(part.get_param("start") or "").strip()
        for child in parts if start else ():
            if str(child.get("content-id") or "").strip() == start:
                return child
        return parts[0]

    def add_text(self, part: Message, ctype: str) -> None:
        payload = raw_payload(part)
        if isinstance(payload, LazyPayload) and len(payload) > MAX_TEXT_BYTES:
            self.defects.append("BodyTextTruncated")
        data = payload_bytes(part, MAX_TEXT_BYTES)
        text = self.text.bytes(data, part.get_content_charset())
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if ctype == "text/html":
            text = html_to_text(text)
        elif "begin " in text:
            text = _UU_BLOCK.sub(self.take_uuencoded, text)
        self.texts.append(text.strip("\n"))

    def take_uuencoded(self, match: re.Match[str]) -> str:
        """A uuencoded file inside a text body becomes an attachment, out of the text."""
        name = self.unique(sanitize_filename(match.group(1)) or "attachment.bin")
        ctype = MIMETYPES.guess_type(name)[0] or "application/octet-stream"
        self.attachments.append(Attachment(name, ctype, len(uu_decode(match.group(2)))))
        return ""

    def add_attachment(self, part: Message, ctype: str) -> None:
        size = guard(lambda: payload_size(part), 0, self.defects, "attachment-size")
        name = guard(
            lambda: filename(part, ctype, self.text, self.unique),
            "",
            self.defects,
            "attachment-name",
        )
        name = name or self.unique("attachment" + extension(ctype))
        self.names.add(name)
        self.attachments.append(Attachment(name, ctype, size))

    def unique(self, name: str) -> str:
        """Generated names are unique within the message: image.jpg, image1.jpg, ..."""
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        candidate, counter = name, 0
        while candidate in self.names:
            counter += 1
            candidate = f"{stem}{counter}{dot}{ext}"
        self.names.add(candidate)
        return candidate
