"""PURE  A part's body: decoded bytes and decoded size, lenient about transfer encodings.

Standard library only. A body is the stdlib's str payload (one surrogate-escaped character
per byte) or, for a large message, a `LazyPayload` still in the raw bytes; a lazy body is
sized a chunk at a time and decoded only up to a limit, never materialised whole.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from email.message import Message

from mailbridge.parse.headers import b64decode_lenient
from mailbridge.parse.large import LazyPayload
from mailbridge.parse.mime_split import raw_payload

__all__ = [
    "UUENCODE",
    "cte",
    "message_size",
    "payload_bytes",
    "payload_head",
    "payload_size",
    "uu_decode",
]

UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def cte(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).split(";", 1)[0].strip().lower()


def payload_head(part: Message, limit: int = 65_536) -> str:
    """The start of the undecoded body as text (all of it for an ordinary body)."""
    payload = raw_payload(part)
    if isinstance(payload, LazyPayload):
        return payload.head(limit).decode("ascii", "surrogateescape")
    return str(payload)


def payload_bytes(part: Message, limit: int | None = None) -> bytes:
    """The decoded payload; lenient about odd transfer encodings (`7-bit`, `utf-8`, ...).
    A lazy body is decoded from at most its first `limit` bytes, cut at a line end."""
    payload = raw_payload(part)
    if isinstance(payload, LazyPayload):
        raw = payload.head(len(payload) if limit is None else limit)
        if len(raw) < len(payload) and (cut := raw.rfind(b"\n")) > 0:
            raw = raw[: cut + 1]
    elif isinstance(payload, str):
        raw = payload.encode("ascii", "surrogateescape")
    else:
        return b""
    return _decode(raw, cte(part))


def _decode(raw: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return b64decode_lenient(raw)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(raw)
    if encoding in UUENCODE:
        return uu_decode(raw.decode("ascii", "replace"))
    return raw


def payload_size(part: Message) -> int:
    payload = raw_payload(part)
    if isinstance(payload, list):  # message/*: the size of the embedded message(s)
        return sum(message_size(item) for item in payload if isinstance(item, Message))
    if isinstance(payload, LazyPayload):
        return _lazy_size(payload, cte(part))
    if not isinstance(payload, str):
        return 0
    encoding = cte(part)
    if encoding == "base64":  # clean base64 is sized without decoding it
        compact = "".join(payload.split())
        if len(compact) % 4 == 0 and _CLEAN_BASE64.fullmatch(compact):
            return len(compact) // 4 * 3 - (len(compact) - len(compact.rstrip("=")))
    elif encoding in ("", "7bit", "8bit", "binary"):
        return len(payload)  # one character per byte (surrogate-escaped)
    return len(payload_bytes(part))


def _lazy_size(payload: LazyPayload, encoding: str) -> int:
    """The decoded size of a lazy body, read a chunk at a time."""
    if encoding == "base64":
        # Lenient base64 keeps only the alphabet, drops a dangling sixth bit and pads:
        # 4 characters are 3 bytes, a remainder of 2 or 3 one or two more.
        count = sum(
            len(chunk) - len(chunk.translate(None, _BASE64_ALPHABET)) for chunk in payload.chunks()
        )
        return count // 4 * 3 + (0, 0, 1, 2)[count % 4]
    if encoding == "quoted-printable":
        return sum(len(binascii.a2b_qp(chunk)) for chunk in payload.chunks(whole_lines=True))
    if encoding in UUENCODE:
        return sum(
            len(uu_decode(chunk.decode("ascii", "replace")))
            for chunk in payload.chunks(whole_lines=True)
        )
    return len(payload)


def message_size(msg: Message) -> int:
    """Size of an embedded message as it stands in the mail, from the parsed pieces
    (serialising it again would cost as much as parsing the whole mail)."""
    size, stack = 0, [msg]
    while stack:
        part = stack.pop()
        size += sum(len(name) + len(str(value)) + 3 for name, value in part.raw_items()) + 1
        payload = raw_payload(part)
        if isinstance(payload, str | LazyPayload):
            size += len(payload)
        elif isinstance(payload, list):
            boundary = len(part.get_boundary() or "")
            size += len(part.preamble or "") + len(part.epilogue or "") + boundary + 6
            for child in payload:
                if isinstance(child, Message):
                    size += boundary + 4
                    stack.append(child)
    return size


def _uu_lines(lines: Iterable[str]) -> Iterator[bytes]:
    for line in lines:
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


def uu_decode(text: str) -> bytes:
    return b"".join(_uu_lines(text.splitlines()))
