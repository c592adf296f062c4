"""The DATA section of an SMTP transaction, read in chunks: what aiosmtpd's `smtp_DATA` reads.

aiosmtpd awaits `readuntil(CRLF)` once per line and runs its bookkeeping per line; profiled under
load that was about 4 % of the daemon's CPU for a 2 KB mail (35 lines), the largest piece of the
protocol left. Here the stream is searched for the only places that matter, a dot at the start of
a line (the end of data, or a dot-stuffed line), so a mail without such lines is one or two
awaits per 8 KB; the line length and size checks then run over the whole data at C speed.
Answers are aiosmtpd's own, byte for byte and in the same order of precedence
(tests/unit/test_smtp_fast.py holds the two against each other on generated sessions).

The rules, as aiosmtpd 1.4 applies them to the dot-stuffed lines (each ending in CRLF, the end
line excluded): a line whose text (before its CRLF) is longer than `line_limit` is "too long" as
soon as it starts; otherwise its bytes are counted when it ends, and the count over `size_limit`
makes the mail "too much"; a complete line over `line_limit` with its CRLF is "too long" after
that. The first of these to happen is the answer, and the data is then read to its end and
dropped. Memory is bounded as there: once the answer is known, nothing more is kept.
"""

from __future__ import annotations

import asyncio

TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's texts
TOO_MUCH = "552 Error: Too much mail data"

_LINE_START_DOT = b"\n."  # with a CR before it (checked), a dot at the start of a line
CRLF = b"\r\n"


def problem(data: bytes | bytearray, size_limit: int | None, line_limit: int) -> str | None:
    """The refusal aiosmtpd would answer for this dot-stuffed data, or None. The data may end
    in a line not yet complete, counted only if it is already too long."""
    lines = data.split(CRLF)
    partial = lines.pop()  # after the last CRLF: b"" when the data ends with one
    if (not size_limit or len(data) <= size_limit) and max(map(len, lines), default=0) + 2 <= (
        line_limit
    ):
        return TOO_LONG if len(partial) > line_limit else None
    count = 0
    for line in lines:
        if len(line) > line_limit:
            return TOO_LONG  # refused as it started, before its bytes were counted
        count += len(line) + 2
        if size_limit and count > size_limit:
            return TOO_MUCH
        if len(line) + 2 > line_limit:
            return TOO_LONG
    return TOO_LONG if len(partial) > line_limit else None


async def read_data(
    reader: asyncio.StreamReader, size_limit: int | None, line_limit: int
) -> tuple[str | None, bytes]:
    """(refusal or None, the content with dot-stuffing undone): up to and including the line
    holding only a dot. `reader`'s limit is `line_limit`, as aiosmtpd makes it."""
    kept = bytearray()  # the data while no refusal is known
    refusal: str | None = None
    seen = 0  # bytes read before the end line
    tail = b""  # the last bytes read: is a found LF-dot preceded by CR?
    # bytes that can still hide a line not yet known to be too long, beyond the size limit
    decide_at = (size_limit or 0) + line_limit + 2
    at_line_start = True
    while True:
        if at_line_start:
            chunk = await reader.readexactly(1)
            dot = chunk == b"."
        else:
            try:
                chunk = await reader.readuntil(_LINE_START_DOT)
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)
                dot = False
            else:
                dot = (tail + chunk)[-3:-2] == b"\r"
        seen += len(chunk)
        tail = (tail + chunk)[-2:]
        if refusal is None:
            kept += chunk
        at_line_start = False
        if dot:
            rest = await _rest_of_line(reader)
            if rest == CRLF:  # a line of only a dot
                seen -= 1  # the end line is not part of the data
                if refusal is None:
                    del kept[-1:]
                break
            seen += len(rest)
            if refusal is None:
                kept += rest
            tail, at_line_start = CRLF, True
        if refusal is None and size_limit and seen > decide_at:
            refusal = problem(kept, size_limit, line_limit)
            if refusal is not None:
                kept = bytearray()
    if refusal is None:
        refusal = problem(kept, size_limit, line_limit)
    if refusal is not None:
        return refusal, b""
    if kept.startswith(b"."):
        del kept[:1]
    return None, bytes(kept).replace(b"\r\n.", b"\r\n")


async def _rest_of_line(reader: asyncio.StreamReader) -> bytes:
    """Up to and including the next CRLF, however long the line."""
    parts = []
    while True:
        try:
            parts.append(await reader.readuntil(CRLF))
            return b"".join(parts)
        except asyncio.LimitOverrunError as exc:
            parts.append(await reader.read(exc.consumed))
