"""PURE  Large messages: let the stdlib split a skeleton, keep the long bodies in the raw bytes.

Standard library only. The stdlib parser turns a 50 MB base64 attachment into a 50 MB str,
a list of a million lines and a joined copy: several hundred MB for one mail. Instead:

1. `elide` finds long runs of body lines (at least `MIN_RUN` bytes, after a blank line, none
   starting with ``-``) and replaces each by one marker line, keeping the run's last line
   ending. The skeleton is a few KB.
2. The stdlib splits the skeleton exactly as it would split the message: a boundary line
   starts with ``--``, so no run holds one; a run's first line is not a header line, so in
   every parser state the marker line is read as the run's first line would be, and after
   it the parser only looks for boundaries.
3. `_expand` puts each run back as a `LazyPayload`: the text the parser kept around the
   marker plus a memoryview of the raw bytes. A marker found anywhere but a body, a
   preamble or an epilogue (say, in a part whose header section had no blank line) means
   the skeleton may not split like the message: `split_large` returns None and the caller
   parses the message the ordinary way.

So the structure, headers, names and defects are the stdlib's own; only the bodies stay
in the raw bytes, read a chunk at a time (`mailbridge.parse.mime_payload`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import BytesParser

from mailbridge.parse.mime_split import HEADER_LINE, iter_parts, split

__all__ = ["CHUNK", "MIN_RUN", "LazyPayload", "elide", "split_large"]

MIN_RUN = 64 * 1024  # shorter runs stay in the skeleton: not worth a marker
CHUNK = 1 << 20  # bytes read at a time from a lazy payload

_MARK = b"\x00MBX"
_MARKER = re.compile("\x00MBX(\\d+)\x00")
_BLANK_LINE = re.compile(rb"\n\r?\n")
# What str.splitlines() (which the stdlib's feed parser uses) breaks lines at, as bytes.
_BREAKS = b"\r\n\x0b\x0c\x1c\x1d\x1e"
_NOT_FIRST = frozenset(b"-: \t" + _BREAKS)


class LazyPayload:
    """A body left in the raw bytes: the text the parser kept around a marker, and the
    elided spans of the raw message (memoryviews: never copied whole)."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._size = sum(len(piece) for piece in pieces)

    def __len__(self) -> int:
        """Bytes, as `len()` of the stdlib's surrogate-escaped str payload would count."""
        return self._size

    def __repr__(self) -> str:
        return f"LazyPayload({self._size} bytes)"

    def head(self, limit: int) -> bytes:
        """The first `limit` bytes."""
        out = bytearray()
        for piece in self._pieces:
            if len(out) >= limit:
                break
            out += piece[: limit - len(out)]
        return bytes(out)

    def chunks(self, size: int = CHUNK, *, whole_lines: bool = False) -> Iterator[bytes]:
        """The payload a chunk at a time; with `whole_lines`, each chunk but the last ends
        with a line feed (unless a single line is longer than eight chunks)."""
        carry = b""
        for piece in self._pieces:
            for pos in range(0, len(piece), size):
                block = carry + bytes(piece[pos : pos + size])
                cut = block.rfind(b"\n") + 1 if whole_lines else len(block)
                if cut == 0 and len(block) < 8 * size:
                    carry = block
                    continue
                cut = cut or len(block)
                yield block[:cut]
                carry = block[cut:]
        if carry:
            yield carry


def split_large(data: bytes, defects: list[str], min_run: int | None = None) -> Message | None:
    """The message split with its long bodies (runs of `min_run`, default `MIN_RUN`, bytes)
    left in `data`; None when that is not possible or not safe (then split it the ordinary
    way)."""
    if _MARK in data:
        return None
    skeleton, spans = elide(data, MIN_RUN if min_run is None else min_run)
    if not spans:
        return None
    found: list[str] = []
    msg = split(BytesParser, skeleton, found)
    if not _expand(msg, memoryview(data), spans):
        return None
    defects.extend(found)
    return msg


def elide(data: bytes, min_run: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The skeleton and the elided spans (start, end) of `data`; the marker of span i is
    ``\\0MBX<i>\\0`` followed by the run's last line ending."""
    out: list[bytes] = []
    spans: list[tuple[int, int]] = []
    copied = pos = 0
    dash = -1
    while (blank := _BLANK_LINE.search(data, pos)) is not None:
        start = blank.end()
        if start >= len(data):
            break
        if data[start] in _NOT_FIRST or data.startswith(b"From ", start):
            pos = start
            continue
        if HEADER_LINE.match(data, start):
            pos = start
            continue
        if dash < start:
            dash = _dash_line(data, start)
        if dash - start >= min_run:
            eol = _break_before(data, dash)
            out += (data[copied:start], b"%s%d\x00" % (_MARK, len(spans)), data[dash - eol : dash])
            spans.append((start, dash - eol))
            copied = dash
        pos = dash  # a later start before `dash` would make a shorter run
    if not spans:
        return data, spans
    out.append(data[copied:])
    return b"".join(out), spans


def _break_before(data: bytes, end: int) -> int:
    """Length of the line break that ends just before `end` (0 when there is none)."""
    if data[end - 2 : end] == b"\r\n":
        return 2
    return 1 if end and data[end - 1] in _BREAKS else 0


def _dash_line(data: bytes, pos: int) -> int:
    """Where the first line at or after `pos` that starts with '-' starts; else len(data)."""
    while (found := data.find(b"-", pos)) > 0:
        if data[found - 1] in _BREAKS:
            return found
        pos = found + 1
    return len(data)


class _Mismatch(Exception):
    """A marker where the skeleton may not split like the message."""


def _expand(msg: Message, view: memoryview, spans: list[tuple[int, int]]) -> bool:
    """Markers back into bodies as LazyPayloads; False unless each one was in a body,
    a preamble or an epilogue, exactly once."""
    used: set[int] = set()

    def lazy(text: str) -> LazyPayload:
        pieces: list[bytes | memoryview] = []
        pos = 0
        for match in _MARKER.finditer(text):
            index = int(match.group(1))
            if index >= len(spans) or index in used:
                raise _Mismatch
            used.add(index)
            if match.start() > pos:
                pieces.append(text[pos : match.start()].encode("ascii", "surrogateescape"))
            start, end = spans[index]
            pieces.append(view[start:end])
            pos = match.end()
        if pos < len(text):
            pieces.append(text[pos:].encode("ascii", "surrogateescape"))
        return LazyPayload(pieces)

    try:
        for part in iter_parts(msg, sys.maxsize):
            payload = getattr(part, "_payload", None)
            if isinstance(payload, str) and "\x00MBX" in payload:
                if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in part.defects):
                    return False  # headers ended at a line that may be the marker
                part._payload = lazy(payload)  # type: ignore[attr-defined]  # stdlib-private body slot
            for attr in ("preamble", "epilogue"):
                value = getattr(part, attr, None)
                if isinstance(value, str) and "\x00MBX" in value:
                    setattr(part, attr, lazy(value))
    except _Mismatch:
        return False
    return len(used) == len(spans)
