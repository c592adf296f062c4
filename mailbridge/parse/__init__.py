"""PURE  raw bytes -> ParsedMessage.

Standard library only. `email` splits the message in its compat32 policy (the modern
policy is about three times slower); only the fields mailbridge needs are decoded here,
each one guarded: a broken header costs that field, never the message. `ParseError` is
raised only when the bytes are not a mail at all.

The work is shared out among modules named for what they own:
- `mime_split`: raw bytes -> stdlib `Message` tree, tolerant framing and folding repair;
- `large_message`: above `LARGE_MESSAGE_BYTES`, the stdlib splits a skeleton of the
  message and long bodies stay in the raw bytes (the same result, a fraction of the
  memory: a 50 MB attachment is sized a chunk at a time, never decoded whole);
- `charsets`, `header_decode`: charset labels, RFC 2047 and 2231, addresses;
- `mime_walk`, `mime_payload`, `attachment_names`: body text and attachments.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_tz
from functools import partial
from types import MappingProxyType
from typing import Any

from mailbridge.parse.headers import TextDecoder, clean, unfold
from mailbridge.parse.large import split_large
from mailbridge.parse.mime_split import header_end, iter_parts, prepare, split
from mailbridge.parse.mime_walk import Walker
from mailbridge.parse.result import Address, Attachment, ParsedMessage, guard

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
        # where the mail was delivered: a Bcc'd token address shows only here (Gmail, Postfix)
        "delivered-to",
        "x-original-to",
    }
)

# Above this size the stdlib never sees the long bodies (`mailbridge.parse.large`).
LARGE_MESSAGE_BYTES = 4 * 1024 * 1024

# what `parse` keeps when the body cannot be walked
_NO_BODY: tuple[str, tuple[Attachment, ...]] = ("", ())


# ---------------------------------------------------------------------------- entry points


def parse(raw: bytes) -> ParsedMessage:
    """Parse a whole message. Raises ParseError only when `raw` is not a mail at all."""
    data, defects = prepare(raw)
    msg = split_large(data, defects) if len(data) > LARGE_MESSAGE_BYTES else None
    if msg is None:
        msg = split(BytesParser, data, defects)
    text = TextDecoder(raw=data)
    guard(lambda: text.fix_8bit_headers(iter_parts(msg)), None, defects, "8bit-headers")
    body, attachments = guard(lambda: Walker(text, defects).run(msg), _NO_BODY, defects, "body")
    return _build(msg, text, defects, body, attachments, walk_defects=True)


def parse_headers_only(raw: bytes) -> ParsedMessage:
    """Everything but `body_text` and `attachments` (left empty); MIME parts are not split."""
    data, defects = prepare(raw)
    msg = split(BytesHeaderParser, data[: header_end(data)], defects)
    text = TextDecoder(raw=data)
    guard(lambda: text.fix_8bit_headers((msg,)), None, defects, "8bit-headers")
    return _build(msg, text, defects, "", (), walk_defects=False)


def decode_header_text(value: str, hint: str | None = None) -> str:
    """Unfold a raw header value and decode 8-bit bytes and RFC 2047 encoded-words."""
    return TextDecoder(hint=hint).header(value)


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
    text: TextDecoder,
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
        return guard(lambda: text.addresses(seen.get(key, []), defects), (), defects, key)

    def mailbox(key: str) -> Address | None:
        """From and Sender name one mailbox; of repeated headers the first usable one wins."""
        for value in seen.get(key, []):
            found: tuple[Address, ...] = guard(
                partial(text.addresses, [value], defects), (), defects, key
            )
            if found and "@" in found[0].addr:
                return found[0]
        found = addresses(key)
        return found[0] if found else None

    def ids(key: str) -> tuple[str, ...]:
        return guard(lambda: _message_ids(first(key)), (), defects, key)

    def decoded(key: str, value: str) -> str:
        if key == "authentication-results":
            # structured, and RFC 2047 has no place in it: the border MTA strips the headers
            # claiming its authserv-id as written, so a decoded one would claim it unstripped
            return unfold(value)
        return guard(lambda: text.header(value), "", defects, key)

    message_id = ids("message-id")
    content_type = guard(msg.get_content_type, "text/plain", defects, "content-type")
    fields: dict[str, Any] = {
        "message_id": message_id[0] if message_id else None,
        "in_reply_to": ids("in-reply-to"),
        "references": ids("references"),
        "thread_index": guard(
            lambda: _thread_index(first("thread-index")), None, defects, "thread-index"
        ),
        "subject": clean(decoded("subject", first("subject"))),
        "from_": mailbox("from"),
        "sender": mailbox("sender"),
        "to": addresses("to"),
        "cc": addresses("cc"),
        "reply_to": addresses("reply-to"),
        "date": guard(lambda: _date(first("date"), defects), None, defects, "date"),
        "content_type": content_type,
        "report_type": guard(
            lambda: _report_type(msg, text, content_type), None, defects, "report-type"
        ),
        "headers": MappingProxyType(
            {k: tuple(decoded(k, v) for v in seen[k]) for k in seen if k in CLASSIFY_HEADERS}
        ),
    }
    found: list[str] = guard(lambda: _collect_defects(msg, walk_defects), [], defects, "defects")
    return ParsedMessage(
        **fields,
        body_text=body,
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects + found)),
    )


def _collect_defects(msg: Message, walk: bool) -> list[str]:
    walked: Iterable[Message] = iter_parts(msg) if walk else (msg,)
    return [type(defect).__name__ for part in walked for defect in getattr(part, "defects", ())]


_ANGLE_ID = re.compile(r"<([^<>]*)>")


def _message_ids(value: str) -> tuple[str, ...]:
    """Ids in header order, without <> or whitespace; ids without brackets are accepted too."""
    text = unfold(value)
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
    text = unfold(value).strip()
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


def _report_type(msg: Message, text: TextDecoder, content_type: str) -> str | None:
    if content_type != "multipart/report":
        return None
    return (text.param(msg, "report-type") or "").strip().lower() or None
