"""The outbound config of the test settings, a ticket and a draft, and the mail they make the way
the real path makes it (`drafts.pending` when queued, `compose.write` when sent), for the unit
tests of outbound mail (headers, hygiene)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address

from mailbridge.config import parse_settings
from mailbridge.outbound.compose import Part, Pending, Written, write
from mailbridge.outbound.config import OutboundConfig
from mailbridge.outbound.drafts import Draft, pending
from mailbridge.storage.models import Ticket

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETTINGS = """
[smtp]
addresses = ["support@example.com"]
[agents]
addresses = ["alice@example.com"]
notify = ["team@example.com"]
[outbound]
from_address = "support@example.com"
"""


def make_config() -> OutboundConfig:
    return OutboundConfig.from_settings(parse_settings(SETTINGS, "test.toml"))


def make_pending(ticket: Ticket, draft: Draft, message_id: str = "own@example.com") -> Pending:
    """The mail as `Outbound` queues it: every header value final."""
    return pending(make_config(), ticket, draft, message_id, NOW)


def make_written(
    ticket: Ticket, draft: Draft, known: list[str], attachments: list[Part] | None = None
) -> Written | None:
    """The mail as the sender writes it (with its fallback for parts it cannot write)."""
    return write(make_pending(ticket, draft), known, attachments or [])


def make_ticket(**kw: object) -> Ticket:
    values: dict[str, object] = {
        "number": 7,
        "token": "abcdefghijklmnop",
        "status": "new",
        "subject": "Printer on fire",
        "customer": "carol@customer.example",
        "customer_name": "Carol",
        "created_at": NOW,
        "thread_index": None,
    }
    return Ticket(**(values | kw))


def make_draft(**kw: object) -> Draft:
    values: dict[str, object] = {
        "kind": "ack",
        "author_kind": "system",
        "to": [Address("Carol", addr_spec="carol@customer.example")],
        "subject": "Re: Printer on fire",
        "body": "Hello\n",
        "from_name": "Support",
        "in_reply_to": "first@customer.example",
        "auto_submitted": "auto-replied",
    }
    return Draft(**(values | kw))  # type: ignore[arg-type]
