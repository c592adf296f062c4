"""Content hashes that survive re-delivery: the same mail fetched twice, or via SMTP and IMAP, hashes alike.

PURE. Trace headers that each hop adds (Received, Return-Path, Delivered-To, ...) and line-ending
differences are left out of the hash; everything the author wrote is in it.
"""

from __future__ import annotations

import hashlib
import re

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
    if raw.startswith(b"From "):  # mbox From_ line: added by the mailbox, not the author
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    raw = _NEWLINES.sub(b"\n", raw)
    match = _SEPARATOR.search(raw)
    head, body = (raw[: match.start()], raw[match.end() :]) if match else (raw, b"")
    digest = hashlib.sha256()
    keep = True
    for line in head.split(b"\n"):
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].strip().lower()
            keep = name not in _TRACE
        if keep:
            digest.update(line.rstrip())
            digest.update(b"\n")
    digest.update(b"\n")
    digest.update(body.rstrip(b"\n"))
    return digest.hexdigest()


def dedup_key(message_id: str | None, content: str) -> str:
    return hashlib.sha256(
        f"{message_id or ''}\0{content}".encode("utf-8", "surrogateescape")
    ).hexdigest()
