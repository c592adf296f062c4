"""PURE  Raw bytes -> a stdlib `Message` tree (compat32), tolerant of what real mail does wrong.

Standard library only. `prepare` skips what precedes the header section (whitespace, an
mbox From_ line, a junk line); `split` lets the stdlib split the message and repairs a
header section it would end too early; `parts` walks the tree without recursion.
`ParseError` is raised only when the bytes are not a mail at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from mailbridge.errors import ParseError

__all__ = ["HEADER_LINE", "header_end", "iter_parts", "prepare", "raw_payload", "split"]

_LEADING_WS = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")
HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_MAX_JUNK_LINES = 5


def prepare(raw: bytes) -> tuple[bytes, list[str]]:
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
        if HEADER_LINE.match(data, pos):
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


def header_end(data: bytes) -> int:
    """Where the header section ends at the latest: its first blank line (or the end)."""
    found = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    return min(found) + 1 if found else len(data)


def _skip_ws(data: bytes, pos: int) -> int:
    match = _LEADING_WS.match(data, pos)
    return match.end() if match else pos


def split(
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


def iter_parts(msg: Message, limit: int = 10_000) -> Iterator[Message]:
    """Every part, depth first, like `Message.walk()` but flat (walk nests one generator
    per level: quadratic on deep mail)."""
    stack = [msg]
    while stack and limit > 0:
        part = stack.pop()
        limit -= 1
        yield part
        payload = raw_payload(part)
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
    end = header_end(data)
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
        elif not HEADER_LINE.match(line):
            if last_known < index:
                break  # the body really starts here
            lines[index] = b" " + line
            changed = True
    return b"\n".join(lines) + data[end:] if changed else None


def raw_payload(part: Message) -> object:
    """The payload as parsed (`get_payload()` would re-decode 8-bit text by its charset)."""
    return getattr(part, "_payload", None)
