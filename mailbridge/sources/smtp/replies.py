"""Every SMTP/LMTP reply mailbridge writes: the only module with SMTP status codes.

A reply is the durability promise: `250` only after the transaction holding the raw bytes
committed, `451 4.3.0` when they could not be stored, so the sending MTA keeps the mail and
retries. Refusals carry enhanced status codes (RFC 3463), which aiosmtpd's own replies lack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailbridge.envelope import Outcome

_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

# --- the mail transaction ---------------------------------------------------------------

RCPT_OK = "250 2.1.5 OK"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
STORAGE_FAILURE = "451 4.3.0 Temporary storage failure, please try again later"
LOCAL_ERROR = "451 4.3.0 Temporary local error, please try again later"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"


def success_reply(outcome: Outcome, queue_id: str) -> str:
    """Every outcome is a 250: we hold the bytes, whatever ingest decided about them.

    The reply names a queue id, never the ticket: ticket numbers are sequential and a subject tag
    is enough to reach a ticket, so a stranger must not learn them. Created, appended, ignored
    and quarantined read the same, so the sender learns nothing about what ingest decided.
    """
    if outcome.outcome == "duplicate":
        return "250 2.0.0 already received"
    return f"250 2.0.0 Ok: queued as {queue_id}"


def accepted(reply: str) -> bool:
    return reply.startswith("250")


def no_such_mailbox(address: str) -> str:
    return f"550 5.1.1 <{clean(address)}>: no such mailbox here"


def too_big(limit: int) -> str:
    return f"552 5.3.4 Message too big (limit {limit} bytes)"


def line_too_long(limit: int) -> str:
    return f"500 5.6.0 Line too long (limit {limit} octets)"


def too_many_fields(limit: int) -> str:
    return f"552 5.3.4 Too many header fields (limit {limit})"


def too_many_received(count: int) -> str:
    return f"554 5.4.6 Too many Received headers ({count}): mail loop?"


def per_recipient(reply: str, recipients: Sequence[str]) -> str:
    """LMTP's end of DATA: one reply per accepted recipient, each naming it (RFC 2033 4.2)."""
    code, _, text = reply.partition(" ")
    return "\r\n".join(f"{code} {text} <{clean(r)}>" if r else reply for r in recipients or [""])


# --- AUTH -------------------------------------------------------------------------------

AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_LOCKED = "454 4.7.0 Too many failed logins, try again later"
CANNOT_DECODE = "501 5.5.2 Can't decode base64"
CANNOT_SPLIT = "501 5.5.2 Can't split auth value"

# --- the connection ---------------------------------------------------------------------

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def timed_out(hostname: str) -> str:
    return f"421 4.4.2 {hostname} Error: timeout exceeded"


def clean(text: str, limit: int = 120) -> str:
    """Text safe to echo in a reply or a log line: printable ASCII only, bounded."""
    return _UNPRINTABLE.sub("?", text)[:limit]
