"""Content hashes that survive re-delivery: the same mail fetched twice, or via SMTP and IMAP, hashes alike.

PURE. Trace headers that each hop adds (Received, Return-Path, Delivered-To, ...) and line-ending
differences are left out of the hash; everything the author wrote is in it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_TRACE = frozenset(
    {
        b"received",
        b"return-path",
        b"delivered-to",
        b"x-original-to",
        b"x-received",
        b"authentication-results",
        b"arc-seal",
        b"arc-message-signature",
        b"arc-authentication-results",
        b"x-spam-status",
        b"x-spam-score",
        b"x-spam-flag",
        b"x-virus-scanned",
    }
)
_SEPARATOR = re.compile(rb"\r?\n\r?\n")
_NEWLINES = re.compile(rb"\r\n|\r")


def content_hash(raw: bytes) -> str:
    view = memoryview(raw)
    offset = 0
    if raw.startswith(b"From "):  # mbox From_ line: added by the mailbox, not the author
        newline = raw.find(b"\n")
        offset = len(raw) if newline < 0 else newline + 1
    match = _SEPARATOR.search(raw, offset)
    head_end, body_start = (match.start(), match.end()) if match else (len(raw), len(raw))
    digest = hashlib.sha256()
    keep = True
    head = _NEWLINES.sub(b"\n", raw[offset:head_end])
    for line in head.split(b"\n"):
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].strip().lower()
            keep = name not in _TRACE
        if keep:
            digest.update(line.rstrip())
            digest.update(b"\n")
    digest.update(b"\n")
    end = len(raw)
    while end > body_start and raw[end - 1] in b"\r\n":
        end -= 1
    _hash_body(digest, view, body_start, end)
    return digest.hexdigest()


def _hash_body(digest: Any, view: memoryview, start: int, end: int, chunk: int = 1 << 20) -> None:
    """Hash with line endings normalised, a chunk at a time: a 50 MB body is never copied whole."""
    pos = start
    while pos < end:
        stop = min(pos + chunk, end)
        if stop < end and view[stop - 1] == 13:  # keep a CR with the LF that may follow it
            stop -= 1 if stop - 1 > pos else 0
        piece = bytes(view[pos:stop])
        digest.update(piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
        pos = stop


def dedup_key(message_id: str | None, content: str) -> str:
    return hashlib.sha256(
        f"{message_id or ''}\0{content}".encode("utf-8", "surrogateescape")
    ).hexdigest()
