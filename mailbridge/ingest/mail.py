"""One mail as ingest holds it: the bytes, what the source knew, the parse and the dedup key; and
who wrote it."""

from __future__ import annotations

from dataclasses import dataclass

from mailbridge.envelope import Envelope, Source
from mailbridge.fingerprint import content_hash, dedup_key
from mailbridge.parse import Address, ParsedMessage
from mailbridge.parse_pool import ParseResult


@dataclass(slots=True)
class Prepared:
    raw: bytes
    envelope: Envelope
    source: Source
    parsed: ParsedMessage | None
    parse_error: str | None
    dedup_key: str
    content_hash: str


def prepare(raw: bytes, envelope: Envelope, source: Source, result: ParseResult) -> Prepared:
    parsed, error = result.parsed, result.error
    chash = content_hash(raw)
    return Prepared(
        raw,
        envelope,
        source,
        parsed,
        error,
        dedup_key(parsed.message_id if parsed is not None else None, chash),
        chash,
    )


def unparsed(raw: bytes, envelope: Envelope, source: Source, reason: str) -> Prepared:
    """Mail that does not go through the parser at all (too large, say)."""
    chash = content_hash(raw)
    return Prepared(raw, envelope, source, None, reason, dedup_key(None, chash), chash)


def author(msg: ParsedMessage | None) -> Address | None:
    """Who wrote the mail: From, else Sender, else Reply-To (some clients and forwarders omit From)."""
    if msg is None:
        return None
    for candidate in (msg.from_, msg.sender, *msg.reply_to):
        if candidate is not None and candidate.addr:
            return candidate
    return None


def sender(p: Prepared) -> str:
    """The author's address, else the envelope sender's; lowercase."""
    found = author(p.parsed)
    if found is not None:
        return found.addr.lower()
    return (p.envelope.mail_from or "").lower()


def actor(p: Prepared) -> str:
    """Who an event says did it."""
    return sender(p) or "unknown"
