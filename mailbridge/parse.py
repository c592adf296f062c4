"""PURE  raw bytes -> ParsedMessage.

Standard library only. `email` splits the message in its compat32 policy (the modern
policy is about three times slower); only the fields mailbridge needs are decoded here,
each one guarded: a broken header costs that field, never the message. `ParseError` is
raised only when the bytes are not a mail at all.

Decisions worth knowing:
- An RFC 2047 encoded-word inside an address (``=?utf-8?Q?agent?=@example.com``) is
  forbidden (RFC 2047 section 5) and a spoofing trick: decoding it would turn a mailbox
  nobody checked into ``agent@example.com``. The address is kept exactly as written and
  the defect ``EncodedWordInAddress`` is recorded.
- Raw 8-bit header bytes and text in a wrong or unknown charset are decoded strictly
  with the declared charset, then UTF-8, then the charset the message declares for its
  text (``hint``), and finally leniently.
- Parts without a file name get one from their type (``image.jpg``, ``document.html``,
  ``attachment.bin``), unique within the message (``image1.jpg``); an attached message is
  named after its subject (``<subject>.eml``).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_tz
from functools import lru_cache
from itertools import islice
from types import MappingProxyType
from typing import TypeVar

from mailbridge.errors import ParseError
from mailbridge.parse_html import html_to_text

__all__ = [
    "CLASSIFY_HEADERS",
    "Address",
    "Attachment",
    "ParsedMessage",
    "decode_header_text",
    "parse",
    "parse_headers_only",
]

CLASSIFY_HEADERS = frozenset(
    {
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "precedence",
        "x-loop",
        "list-id",
        "list-unsubscribe",
        "authentication-results",
        "return-path",
        "x-mailbridge-ticket",
        "x-failed-recipients",
        "x-ms-exchange-generated-message-source",
        "x-spam-flag",
        "thread-topic",
    }
)


@dataclass(frozen=True, slots=True)
class Address:
    name: str  # display name, RFC 2047 decoded; '' if none
    addr: str  # as written, stripped; encoded-words are never decoded here


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str  # sanitised; derived from the part's type when the mail gives none
    content_type: str
    size: int  # decoded payload bytes


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_index: str | None
    subject: str
    from_: Address | None
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    content_type: str
    report_type: str | None
    headers: Mapping[str, tuple[str, ...]]
    body_text: str
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]


# ---------------------------------------------------------------------------- entry points


def parse(raw: bytes) -> ParsedMessage:
    """Parse a whole message. Raises ParseError only when `raw` is not a mail at all."""
    data, defects = _prepare(raw)
    msg = _split(BytesParser, data, defects)
    text = _Text(raw=data)
    _guard(lambda: text.fix_8bit_headers(_parts(msg)), None, defects, "8bit-headers")
    body, attachments = _guard(lambda: _Walker(text, defects).run(msg), ("", ()), defects, "body")
    return _build(msg, text, defects, body, attachments, walk_defects=True)


def parse_headers_only(raw: bytes) -> ParsedMessage:
    """Everything but `body_text` and `attachments` (left empty); MIME parts are not split."""
    data, defects = _prepare(raw)
    msg = _split(BytesHeaderParser, data[: _header_end(data)], defects)
    text = _Text(raw=data)
    _guard(lambda: text.fix_8bit_headers((msg,)), None, defects, "8bit-headers")
    return _build(msg, text, defects, "", (), walk_defects=False)


def decode_header_text(value: str, hint: str | None = None) -> str:
    """Unfold a raw header value and decode 8-bit bytes and RFC 2047 encoded-words."""
    return _Text(hint=hint).header(value)


T = TypeVar("T")


def _guard(func: Callable[[], T], default: T, defects: list[str], field: str) -> T:
    """One field's decoder may fail on hostile input; the message survives without it."""
    try:
        return func()
    except Exception as exc:
        defects.append(f"FieldError:{field}:{type(exc).__name__}")
        return default


# ---------------------------------------------------------------------------- framing

_LEADING_WS = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_MAX_JUNK_LINES = 5


def _prepare(raw: bytes) -> tuple[bytes, list[str]]:
    """Skip what precedes the header section: whitespace, an mbox From_ line, a junk line."""
    data = bytes(raw)
    defects: list[str] = []
    start = _skip_ws(data, 0)
    if start:
        defects.append("LeadingWhitespaceSkipped")
    if data.startswith(b"From ", start):
        newline = data.find(b"\n", start)
        start = len(data) if newline < 0 else _skip_ws(data, newline + 1)
    if start >= len(data):
        raise ParseError("empty input")
    pos = start
    for _ in range(_MAX_JUNK_LINES + 1):
        if _HEADER_LINE.match(data, pos):
            break
        newline = data.find(b"\n", pos)
        if newline < 0 or not data[pos:newline].strip():
            raise ParseError("no header section: not a mail")
        pos = newline + 1
    else:
        raise ParseError("no header section: not a mail")
    if pos > start:
        defects.append("LeadingJunkSkipped")
    return (data[pos:] if pos else data), defects


def _header_end(data: bytes) -> int:
    """Where the header section ends at the latest: its first blank line (or the end)."""
    found = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    return min(found) + 1 if found else len(data)


def _skip_ws(data: bytes, pos: int) -> int:
    match = _LEADING_WS.match(data, pos)
    return match.end() if match else pos


def _split(
    parser: type[BytesParser] | type[BytesHeaderParser], data: bytes, defects: list[str]
) -> Message:
    """Split with the stdlib; if MIME splitting itself fails (say, nesting deep enough for
    a RecursionError), the headers alone are still a mail."""
    try:
        msg = parser(policy=compat32).parsebytes(data)
        if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects):
            repaired = _repair_folding(data)
            if repaired is not None:
                defects.append("HeaderFoldingRepaired")
                msg = parser(policy=compat32).parsebytes(repaired)
        return msg
    except Exception as exc:
        defects.append(f"MimeSplitFailed:{type(exc).__name__}")
        try:
            msg = BytesHeaderParser(policy=compat32).parsebytes(data)
        except Exception as again:
            raise ParseError(f"unparseable message: {type(again).__name__}") from again
        msg.set_payload("")  # the body could not be split; do not look into it
        return msg


def _parts(msg: Message, limit: int = 10_000) -> Iterator[Message]:
    """Every part, depth first, like `Message.walk()` but flat (walk nests one generator
    per level: quadratic on deep mail)."""
    stack = [msg]
    while stack and limit > 0:
        part = stack.pop()
        limit -= 1
        yield part
        payload = _raw_payload(part)
        if isinstance(payload, list):
            stack.extend(child for child in reversed(payload) if isinstance(child, Message))


_KNOWN_HEADER = re.compile(
    rb"(?:received|from|to|cc|subject|date|message-id|mime-version|content-[a-z-]+|return-path|"
    rb"reply-to|in-reply-to|references|sender|delivered-to|x-[a-z0-9-]+|dkim-signature|"
    rb"authentication-results|thread-[a-z]+|list-[a-z]+|auto-submitted|precedence)[ \t]*:",
    re.I,
)


_OBSOLETE_COLON = re.compile(rb"([!-9;-~]+)[ \t]+:")


def _repair_folding(data: bytes) -> bytes | None:
    """Repair a header section the stdlib would end too early: `Name : value` (obsolete
    RFC 822 syntax) loses its space, and a line without a colon that lost its folding
    whitespace becomes a continuation when a well-known header follows before the first
    blank line."""
    end = _header_end(data)
    lines = data[:end].split(b"\n")
    known = [index for index, line in enumerate(lines) if _KNOWN_HEADER.match(line)]
    last_known = known[-1] if known else -1
    changed = False
    for index, line in enumerate(lines):
        if not line.strip() or line[:1] in b" \t":
            continue
        obsolete = _OBSOLETE_COLON.match(line)
        if obsolete:
            lines[index] = obsolete.group(1) + b":" + line[obsolete.end() :]
            changed = True
        elif not _HEADER_LINE.match(line):
            if last_known < index:
                break  # the body really starts here
            lines[index] = b" " + line
            changed = True
    return b"\n".join(lines) + data[end:] if changed else None


# ---------------------------------------------------------------------------- text decoding

# Charset labels seen in real mail that Python does not know, or knows too narrowly.
_CHARSET_ALIASES = {
    "iso-gb2312": "gb18030",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "x-windows-949": "cp949",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "unicode-1-1-utf-7": "utf-7",
}
# Labels that say nothing useful: guess (UTF-8, then the hint, then windows-1252).
_GUESS = frozenset(
    {"", "us-ascii", "ascii", "ansi_x3.4-1968", "x-unknown", "unknown", "unknown-8bit",
     "x-user-defined", "default", "8bit", "binary", "charset"}
)  # fmt: skip
_WINDOWS_CP = re.compile(r"(?:x-)?(?:windows|win|cp|ms)[-_ ]?(\d{3,4})")
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]{1,40})", re.I)


@lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """Python text codec for a charset label; None when the label is useless or unknown."""
    label = (charset or "").strip().strip("\"'").lower()
    if label in _GUESS:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    match = _WINDOWS_CP.fullmatch(label)
    if match:
        label = "cp" + match.group(1)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):  # unknown, or not even a name (NUL inside)
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


_MULTIBYTE = frozenset(
    {"gb18030", "gbk", "gb2312", "hz", "big5", "big5hkscs", "cp950", "cp932", "shift_jis",
     "euc_jp", "iso2022_jp", "iso2022_jp_2", "iso2022_jp_ext", "iso2022_kr", "cp949",
     "euc_kr", "johab"}
)  # fmt: skip
# Japanese mail: Microsoft's ISO-2022-JP (NEC and IBM extensions such as circled digits,
# which Python's codec rejects) and 8-bit Shift_JIS or EUC-JP under an ISO-2022-JP label.
_JIS_VIA_CP932 = "x-jis-via-cp932"
_SIBLINGS = {
    "iso2022_jp": (_JIS_VIA_CP932, "cp932", "euc_jp"),
    "iso2022_jp_2": (_JIS_VIA_CP932, "cp932", "euc_jp"),
}
_JIS_ESCAPE = re.compile(rb"\x1b(\$[@B]|\([BJI])")


def _jis_via_cp932(data: bytes) -> str:
    """ISO-2022-JP as Microsoft writes it: JIS X 0208 pairs turned into Shift_JIS, decoded
    as cp932 (which holds the vendor extensions); strict, so a failure moves on."""
    out = bytearray()
    mode = b"(B"
    pos = 0
    for match in [*_JIS_ESCAPE.finditer(data), None]:
        chunk = data[pos : match.start() if match else len(data)]
        if mode[0:1] == b"$":
            if len(chunk) % 2:
                raise UnicodeDecodeError("iso2022_jp", data, pos, pos + len(chunk), "odd")
            for j1, j2 in zip(chunk[::2], chunk[1::2], strict=True):
                s1 = ((j1 - 0x21) >> 1) + 0x81
                s1 += 0x40 if s1 > 0x9F else 0
                s2 = j2 + (0x1F + (j2 >= 0x60) if j1 % 2 else 0x7E)
                out += bytes((s1 & 0xFF, s2 & 0xFF))
        elif mode == b"(I":
            out += bytes(b | 0x80 for b in chunk)
        else:
            out += chunk
        if match:
            mode, pos = match.group(1), match.end()
    return out.decode("cp932")


def _charset_hint(data: bytes) -> str | None:
    """The charset the message declares for its text (MIME or HTML meta), a multi-byte one
    first: a strict multi-byte decode that succeeds means something, a single-byte one
    always succeeds. Read from the raw bytes so both parse paths agree."""
    found: list[str] = []
    for match in islice(_CHARSET_PARAM.finditer(data, 0, 262_144), 50):
        codec = _codec(match.group(1).decode("ascii", "replace"))
        if codec in _MULTIBYTE:
            return codec
        if codec is not None and codec != "utf-8":
            found.append(codec)
    return found[0] if found else None


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?(.{0,4000}?)\?=")
_PLACEHOLDER = re.compile("\x01(\\d+)\x01")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]+")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
# A UTF-8 sequence cut short near the end (a truncated header), then a little ASCII.
_CUT_UTF8 = re.compile(rb"[\xc2-\xf4][\x80-\xbf]{0,2}([\x00-\x7f]{0,8})\Z")


def _clean(text: str) -> str:
    """One line for display: control characters become spaces; stripped."""
    return _CONTROL.sub(" ", text).strip()


def _unfold(value: str) -> str:
    return value.replace("\r", "").replace("\n", "") if "\n" in value or "\r" in value else value


def _b64decode(data: bytes) -> bytes:
    """Lenient base64: junk ignored, padding repaired, a dangling sixth bit dropped."""
    compact = _B64_JUNK.sub(b"", data)
    compact = compact[: len(compact) - (len(compact) % 4 == 1)]
    return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))


class _Text:
    """Decodes header and body text for one message, knowing its charset hint (read from
    the raw message only when a decode needs it)."""

    def __init__(self, hint: str | None = None, raw: bytes | None = None) -> None:
        self._hint = _codec(hint)
        self._raw = raw

    @property
    def hint(self) -> str | None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            try:
                self._hint = _charset_hint(raw)
            except Exception:  # a hint is a nicety
                self._hint = None
        return self._hint

    def bytes(self, data: bytes, charset: str | None) -> str:
        """Strictly: UTF-8 first for 8-bit data (text that validates as UTF-8 almost surely
        is; so does truncated UTF-8), then the declared charset and its known
        mislabellings, or, with no usable declaration, the message's hint; else leniently
        (declared charset or windows-1252). Undeclared ISO-2022 escapes are honoured."""
        declared = _codec(charset)
        if declared is None and b"\x1b" in data:
            declared = "iso2022_jp_2"
        elif declared is None and data.isascii():
            return data.decode("ascii")
        utf8_first = not data.isascii() and not (declared or "").startswith(("utf_16", "utf_32"))
        if utf8_first:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                cut = _CUT_UTF8.match(data, exc.start)
                head = data[: exc.start].decode("utf-8") if cut else ""
                if cut and exc.start - len(head) >= 2:  # UTF-8 whose last character was cut
                    return head + "\ufffd" + cut.group(1).decode("ascii")
        for codec in self._candidates(declared, utf8_first):
            if codec is not None:
                try:
                    return _jis_via_cp932(data) if codec == _JIS_VIA_CP932 else data.decode(codec)
                except Exception:  # UnicodeDecodeError, or a codec misbehaving
                    continue
        try:
            return data.decode(declared or "cp1252", "replace")
        except Exception:
            return data.decode("cp1252", "replace")

    def _candidates(self, declared: str | None, utf8_tried: bool) -> Iterator[str | None]:
        yield declared
        yield from _SIBLINGS.get(declared or "", ())
        if not utf8_tried:
            yield "utf-8"
        if declared is None:  # only now is the message's own declaration worth reading
            hint = self.hint
            yield hint
            yield from _SIBLINGS.get(hint or "", ())

    def recover(self, value: str) -> str:
        """Raw 8-bit bytes (surrogate-escaped by the parser) decoded to text."""
        if value.isascii():
            return self.bytes(value.encode("ascii"), None) if "\x1b" in value else value
        try:
            raw = value.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # already text
            return value
        return self.bytes(raw, None)

    def fix_8bit_headers(self, parts: Iterable[Message]) -> None:
        """Decode raw 8-bit header values in place so the stdlib accessors see text.

        compat32 hands such values out as `Header` objects whose bytes are already lost
        (U+FFFD); `_headers` is the list behind `raw_items()`, rewritten in order.
        """
        for part in parts:
            headers = getattr(part, "_headers", None)
            if isinstance(headers, list) and not all(
                isinstance(v, str) and v.isascii() for _, v in headers
            ):
                fixed = [(n, self.recover(v) if isinstance(v, str) else v) for n, v in headers]
                part._headers = fixed  # type: ignore[attr-defined]

    def header(self, value: str) -> str:
        """Unfolded text with RFC 2047 encoded-words decoded (adjacent words joined)."""
        text = _unfold(self.recover(value))
        if "=?" not in text:
            return text
        out: list[str] = []
        pending: tuple[str, bytearray] | None = None  # one charset's bytes decode together
        pos = 0
        for match in _ENCODED_WORD.finditer(text):
            gap = text[pos : match.start()]
            if gap and not (pending and gap.isspace()):
                if pending:
                    out.append(self.bytes(bytes(pending[1]), pending[0]))
                    pending = None
                out.append(gap)
            charset = match.group(1).split("*", 1)[0].lower()
            if match.group(2) in "qQ":
                raw = binascii.a2b_qp(match.group(3).encode("utf-8", "surrogatepass"), header=True)
            else:
                raw = _b64decode(match.group(3).encode("ascii", "ignore"))
            if pending and pending[0] == charset:
                pending[1].extend(raw)
            else:
                if pending:
                    out.append(self.bytes(bytes(pending[1]), pending[0]))
                pending = (charset, bytearray(raw))
            pos = match.end()
        if pending:
            out.append(self.bytes(bytes(pending[1]), pending[0]))
        out.append(text[pos:])
        return "".join(out)

    def addresses(self, values: list[str], defects: list[str]) -> tuple[Address, ...]:
        """Addresses of one or more headers; encoded-words are kept whole while splitting."""
        text = ", ".join(_unfold(self.recover(value)) for value in values)
        words: list[str] = []

        def hide(match: re.Match[str]) -> str:
            words.append(match.group(0))
            return f"\x01{len(words) - 1}\x01"

        def unhide(value: str) -> str:
            if not words:
                return value
            return _PLACEHOLDER.sub(
                lambda m: words[int(m.group(1))] if int(m.group(1)) < len(words) else "", value
            )

        if "=?" in text:  # an encoded-word may hide ',' or '<' from the address parser
            text = _ENCODED_WORD.sub(hide, text)
        found: list[Address] = []
        for name, addr in getaddresses([text]):
            addr = _CONTROL.sub("", unhide(addr)).strip()
            if not addr:
                continue
            if "=?" in addr and _ENCODED_WORD.search(addr):
                defects.append("EncodedWordInAddress")
            name = _clean(self.header(unhide(name)))
            if len(name) > 1 and name[0] == name[-1] == "'":  # Outlook's 'Name' <addr>
                name = name[1:-1].strip()
            found.append(Address(name=name, addr=addr))
        return tuple(found)

    def param(self, part: Message, name: str, header: str = "content-type") -> str | None:
        """A MIME parameter with RFC 2231 (charset, continuations) and RFC 2047 decoded."""
        value = part.get_param(name, None, header)
        if value is None:
            return None
        if isinstance(value, tuple):  # RFC 2231: (charset, language, one char per byte)
            charset, _language, chars = value
            return self.bytes(str(chars).encode("latin-1", "replace"), charset)
        return self.header(str(value).strip())


# ---------------------------------------------------------------------------- header fields

_WANTED = CLASSIFY_HEADERS | {
    "from",
    "sender",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "thread-index",
}


def _build(
    msg: Message,
    text: _Text,
    defects: list[str],
    body: str,
    attachments: tuple[Attachment, ...],
    *,
    walk_defects: bool,
) -> ParsedMessage:
    seen: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = name.strip().lower()
        if key in _WANTED:
            seen.setdefault(key, []).append(value if isinstance(value, str) else str(value))

    def first(key: str) -> str:
        return seen[key][0] if key in seen else ""

    def addresses(key: str) -> tuple[Address, ...]:
        return _guard(lambda: text.addresses(seen.get(key, []), defects), (), defects, key)

    def mailbox(key: str) -> Address | None:
        """From and Sender name one mailbox; of repeated headers the first usable one wins."""
        for value in seen.get(key, []):
            found = _guard(lambda v=value: text.addresses([v], defects), (), defects, key)  # type: ignore[misc]
            if found and "@" in found[0].addr:
                return found[0]
        found = addresses(key)
        return found[0] if found else None

    def ids(key: str) -> tuple[str, ...]:
        return _guard(lambda: _message_ids(first(key)), (), defects, key)

    def decoded(key: str, value: str) -> str:
        return _guard(lambda: text.header(value), "", defects, key)

    message_id = ids("message-id")
    content_type = _guard(msg.get_content_type, "text/plain", defects, "content-type")
    fields = {
        "message_id": message_id[0] if message_id else None,
        "in_reply_to": ids("in-reply-to"),
        "references": ids("references"),
        "thread_index": _guard(
            lambda: _thread_index(first("thread-index")), None, defects, "thread-index"
        ),
        "subject": _clean(decoded("subject", first("subject"))),
        "from_": mailbox("from"),
        "sender": mailbox("sender"),
        "to": addresses("to"),
        "cc": addresses("cc"),
        "reply_to": addresses("reply-to"),
        "date": _guard(lambda: _date(first("date"), defects), None, defects, "date"),
        "content_type": content_type,
        "report_type": _guard(
            lambda: _report_type(msg, text, content_type), None, defects, "report-type"
        ),
        "headers": MappingProxyType(
            {k: tuple(decoded(k, v) for v in seen[k]) for k in seen if k in CLASSIFY_HEADERS}
        ),
    }
    found = _guard(lambda: _collect_defects(msg, walk_defects), [], defects, "defects")
    return ParsedMessage(
        **fields,
        body_text=body,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects + found)),
    )


def _collect_defects(msg: Message, walk: bool) -> list[str]:
    parts: Iterable[Message] = _parts(msg) if walk else (msg,)
    return [type(defect).__name__ for part in parts for defect in getattr(part, "defects", ())]


_ANGLE_ID = re.compile(r"<([^<>]*)>")


def _message_ids(value: str) -> tuple[str, ...]:
    """Ids in header order, without <> or whitespace; ids without brackets are accepted too."""
    text = _unfold(value)
    found = ["".join(item.split()) for item in _ANGLE_ID.findall(text)]
    if not found:
        tokens = text.split()
        found = [t.strip("<>") for t in tokens if "@" in t] or (tokens if len(tokens) == 1 else [])
    return tuple(dict.fromkeys(item for item in found if item))


def _thread_index(value: str) -> str | None:
    """Outlook's conversation id: the first 22 bytes of the base64 Thread-Index, in hex."""
    compact = "".join(value.split())
    if not compact:
        return None
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw[:22].hex() if len(raw) >= 22 else None


# The date proper; what follows may be a comment or, broken, the next header (Received:).
_DATE = re.compile(
    r"(?:[A-Za-z]{3,9},?\s*)?\d{1,2}[\s-]+[A-Za-z]{3,9}[\s-]+\d{2,4}\s+\d{1,2}:\d{2}(?::\d{2})?"
    r"(?:\s*(?:[+-]\d{4}|[A-Za-z]{1,5}\b))?"
)


_COMMENT = re.compile(r"\([^()]*\)")
_SPACED_COLON = re.compile(r"(?<=\d)\s*:\s*(?=\d)")


def _date(value: str, defects: list[str]) -> datetime | None:
    text = _unfold(value).strip()
    if not text:
        return None
    if "(" in text or " :" in text or ": " in text:  # obsolete syntax: comments, spaced colons
        text = _SPACED_COLON.sub(":", _COMMENT.sub(" ", text))
    match = _DATE.search(text)
    parts = parsedate_tz(match.group(0) if match else text)
    try:
        if parts is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = parts[:6]
        offset = timezone(timedelta(seconds=parts[9] or 0))
        return datetime(year, month, day, hour, minute, second, tzinfo=offset).astimezone(UTC)
    except (ValueError, OverflowError):
        defects.append("InvalidDate")
        return None


def _report_type(msg: Message, text: _Text, content_type: str) -> str | None:
    if content_type != "multipart/report":
        return None
    return (text.param(msg, "report-type") or "").strip().lower() or None


# ---------------------------------------------------------------------------- body, attachments

_BODY_TYPES = frozenset({"text/plain", "text/html"})
_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_MAX_DEPTH = 64
_MIMETYPES = mimetypes.MimeTypes(filenames=())  # built-in table only: same names on every host
_EXTENSIONS = {
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "text/plain": ".txt",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/news": ".eml",
    "message/rfc822-headers": ".txt",
    "text/calendar": ".ics",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".pgp",
    "application/ms-tnef": ".dat",
}
_STEMS = {
    "text/calendar": "calendar",
    "message/delivery-status": "delivery-status",
    "application/pkcs7-signature": "smime",
    "application/x-pkcs7-signature": "smime",
    "application/pkcs7-mime": "smime",
    "application/x-pkcs7-mime": "smime",
    "application/pgp-signature": "signature",
    "application/ms-tnef": "winmail",
}
_MAIN_STEMS = {"image": "image", "video": "video", "audio": "audio", "text": "document"}
# Control characters, zero-width and bidi controls (`\u202e` turns "fdp.exe" into "exe.pdf").
_UNSAFE_NAME = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_UU_BLOCK = re.compile(
    r"^begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]+?)[ \t]*\r?\n(.*?)^end[ \t]*$", re.M | re.S
)
_UU_BEGIN = re.compile(r"\s*begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]+)")
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_FILENAME_LIKE = re.compile(r".+\.[A-Za-z0-9]{2,6}")


def _extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type) or _MIMETYPES.guess_extension(content_type) or ".bin"


def _sanitize_filename(name: str, keep_slashes: bool = False) -> str:
    """No directories, no control or bidi characters, at most 255 characters."""
    if keep_slashes:
        name = name.replace("/", "_").replace("\\", "_")
    else:
        name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_NAME.sub("", name).strip()
    if not name.strip("."):
        return ""
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = stem[: 254 - len(ext)] + dot + ext if dot and len(ext) < 16 else name[:255]
    return name


def _cte(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).split(";", 1)[0].strip().lower()


def _raw_payload(part: Message) -> object:
    """The payload as parsed (`get_payload()` would re-decode 8-bit text by its charset)."""
    return getattr(part, "_payload", None)


def _payload_bytes(part: Message) -> bytes:
    """The decoded payload; lenient about odd transfer encodings (`7-bit`, `utf-8`, ...)."""
    payload = _raw_payload(part)
    if not isinstance(payload, str):
        return b""
    raw = payload.encode("ascii", "surrogateescape")
    cte = _cte(part)
    if cte == "base64":
        return _b64decode(raw)
    if cte == "quoted-printable":
        return binascii.a2b_qp(raw)
    if cte in _UUENCODE:
        return _uu_decode(raw.decode("ascii", "replace"))
    return raw


def _payload_size(part: Message) -> int:
    payload = _raw_payload(part)
    if isinstance(payload, list):  # message/*: the size of the embedded message(s)
        return sum(_message_size(item) for item in payload if isinstance(item, Message))
    if not isinstance(payload, str):
        return 0
    cte = _cte(part)
    if cte == "base64":  # clean base64 is sized without decoding it
        compact = "".join(payload.split())
        if len(compact) % 4 == 0 and _CLEAN_BASE64.fullmatch(compact):
            return len(compact) // 4 * 3 - (len(compact) - len(compact.rstrip("=")))
    elif cte in ("", "7bit", "8bit", "binary"):
        return len(payload)  # one character per byte (surrogate-escaped)
    return len(_payload_bytes(part))


def _message_size(msg: Message) -> int:
    """Size of an embedded message as it stands in the mail, from the parsed pieces
    (serialising it again would cost as much as parsing the whole mail)."""
    size, stack = 0, [msg]
    while stack:
        part = stack.pop()
        size += sum(len(name) + len(str(value)) + 3 for name, value in part.raw_items()) + 1
        payload = _raw_payload(part)
        if isinstance(payload, str):
            size += len(payload)
        elif isinstance(payload, list):
            boundary = len(part.get_boundary() or "")
            size += len(part.preamble or "") + len(part.epilogue or "") + boundary + 6
            for child in payload:
                if isinstance(child, Message):
                    size += boundary + 4
                    stack.append(child)
    return size


def _uu_lines(text: str) -> Iterator[bytes]:
    for line in text.splitlines():
        if line.startswith("begin ") or line.strip() in ("end", ""):
            continue
        raw = line.encode("ascii", "replace")
        try:
            yield binascii.a2b_uu(raw)
        except binascii.Error:  # trailing garbage from some encoders: cut to the stated length
            try:
                yield binascii.a2b_uu(raw[: (((raw[0] - 32) & 63) * 4 + 5) // 3])
            except binascii.Error:
                continue


def _uu_decode(text: str) -> bytes:
    return b"".join(_uu_lines(text))


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition") or "").split(";", 1)[0].strip().lower()
    return disposition == "attachment" or part.get_filename() is not None


def _rank(part: Message) -> int:
    """How good a rendition is as the body: text/plain 2, HTML 1, anything else 0."""
    ctype = part.get_content_type()
    if ctype.startswith("multipart/"):
        types = {p.get_content_type() for p in _parts(part, 200)}
        return 2 if "text/plain" in types else 1 if "text/html" in types else 0
    return 2 if ctype == "text/plain" else 1 if ctype == "text/html" else 0


class _Walker:
    """Chooses the body parts and lists the others as attachments, in document order.

    Modes: 'body' (inline text/plain and text/html are body text), 'alt' (an alternative
    not chosen: its inline text is dropped, other parts are attachments) and 'attach'
    (the resources of a multipart/related: every part is an attachment).
    """

    def __init__(self, text: _Text, defects: list[str], names: set[str] | None = None) -> None:
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
        ctype = _guard(part.get_content_type, "application/octet-stream", self.defects, "part")
        children = _raw_payload(part)
        if ctype.startswith("multipart/"):
            if isinstance(children, list):
                parts = [child for child in children if isinstance(child, Message)]
                self.visit_multipart(part, ctype, parts, mode, depth)
            elif mode == "body":  # the boundary never appears: the text is all there is
                _guard(lambda: self.add_text(part, "text/plain"), None, self.defects, "part")
            return
        inline = ctype in _BODY_TYPES and mode != "attach"
        if inline and not _guard(lambda: _is_attachment(part), False, self.defects, "part"):
            if mode == "body":
                _guard(lambda: self.add_text(part, ctype), None, self.defects, "part")
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
        ranked = sorted(parts, key=lambda p: -_guard(lambda: _rank(p), 0, self.defects, "part"))
        chosen, trial = ranked[-1], None
        for candidate in ranked:
            trial = _Walker(self.text, self.defects, self.names)
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
        text = self.text.bytes(_payload_bytes(part), part.get_content_charset())
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if ctype == "text/html":
            text = html_to_text(text)
        elif "begin " in text:
            text = _UU_BLOCK.sub(self.take_uuencoded, text)
        self.texts.append(text.strip("\n"))

    def take_uuencoded(self, match: re.Match[str]) -> str:
        """A uuencoded file inside a text body becomes an attachment, out of the text."""
        name = self.unique(_sanitize_filename(match.group(1)) or "attachment.bin")
        ctype = _MIMETYPES.guess_type(name)[0] or "application/octet-stream"
        self.attachments.append(Attachment(name, ctype, len(_uu_decode(match.group(2)))))
        return ""

    def add_attachment(self, part: Message, ctype: str) -> None:
        size = _guard(lambda: _payload_size(part), 0, self.defects, "attachment-size")
        name = _guard(lambda: self.filename(part, ctype), "", self.defects, "attachment-name")
        name = name or self.unique("attachment" + _extension(ctype))
        self.names.add(name)
        self.attachments.append(Attachment(name, ctype, size))

    def filename(self, part: Message, ctype: str) -> str:
        """The part's own name, else one derived from what the part says about itself."""
        given = (
            self.text.param(part, "filename", "content-disposition"),
            self.text.param(part, "name"),
        )
        for value in given:
            if value and (name := _sanitize_filename(value)):
                return name
        description = _clean(self.text.header(str(part.get("content-description") or "")))
        if ctype in ("message/rfc822", "message/global", "message/news"):
            inner = _raw_payload(part)
            subject = ""
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                subject = _clean(self.text.header(str(inner[0].get("subject") or "")))
            stem = _sanitize_filename(subject or description, keep_slashes=True) or "message"
            return self.unique(stem + ".eml")
        if _cte(part) in _UUENCODE:
            match = _UU_BEGIN.match(str(_raw_payload(part)))
            if match and (name := _sanitize_filename(match.group(1).strip())):
                return name
        location = str(part.get("content-location") or "").split("?", 1)[0].strip()
        if location and (name := _sanitize_filename(location)):
            return name
        cid = _clean(str(part.get("content-id") or "")).strip("<>")
        local = cid.split("@", 1)[0] if "@" in cid else ""
        if _FILENAME_LIKE.fullmatch(local) and (name := _sanitize_filename(local)):
            return name
        if description and (name := _sanitize_filename(description + _extension(ctype))):
            return self.unique(name)
        stem = _STEMS.get(ctype) or _MAIN_STEMS.get(ctype.split("/", 1)[0])
        if stem is None and local and (name := _sanitize_filename(local)):
            return name
        return self.unique((stem or "attachment") + _extension(ctype))

    def unique(self, name: str) -> str:
        """Generated names are unique within the message: image.jpg, image1.jpg, ..."""
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        candidate, counter = name, 0
        while candidate in self.names:
            counter += 1
            candidate = f"{stem}{counter}{dot}{ext}"
        self.names.add(candidate)
        return candidate
