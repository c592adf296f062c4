"""From a `Draft` (who, what, why) to a queued mail: its final header values (a `compose.Pending`),
the copy stored on the ticket and its outbox row (see `mailbridge.outbound`)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from typing import TYPE_CHECKING

from mailbridge.fingerprint import dedup_key
from mailbridge.mailtext import header_safe
from mailbridge.outbound.compose import Pending, box_of, conversation_id
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.outbound.config import OutboundConfig
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.outbound")

RELAYED_BY = "relayed reply of "  # the verdict of a relay's copy names its agent


@dataclass(slots=True)
class Draft:
    """One outgoing mail before it has headers: who, what, and why."""

    kind: str  # ack | notify | relay | notice | rule (the outbox kind)
    author_kind: str  # system | agent (of the copy stored on the ticket)
    to: list[Address]
    subject: str
    body: str
    from_name: str
    in_reply_to: str | None
    auto_submitted: str | None  # auto-replied | auto-generated | None for human mail
    cc: list[Address] = field(default_factory=list)
    verdict: str = ""
    attach_pk: int | None = None  # the stored message whose attachments go along


def values(config: OutboundConfig, ticket: Ticket) -> dict[str, object]:
    """What every template may say about the ticket."""
    from_address, from_name = config.sender(ticket.queue)
    return {
        "number": ticket.number,
        "tag": config.tagger.format(ticket.number),
        "subject": header_safe(ticket.subject) or "(no subject)",
        "status": ticket.status,
        "customer": ticket.customer,
        "name": header_safe(ticket.customer_name) or ticket.customer,
        "reply_to": config.tokens.address(ticket.token, from_address),
        "from_name": from_name,
    }


def queue(
    session: Session, config: OutboundConfig, ticket: Ticket, drafts: list[Draft], now: datetime
) -> None:
    """Store the outbound copies on the ticket, index their Message-IDs, queue their outbox
    rows: three statements for any number of drafts. The bytes come later (the sender)."""
    if not drafts:
        return
    from_address = config.sender(ticket.queue)[0]
    messages, rows = [], []
    for draft in drafts:
        message_id = f"{secrets.token_hex(16)}@{config.domain}"
        spec = pending(config, ticket, draft, message_id, now)
        recipients = [a.addr_spec.lower() for a in (*draft.to, *draft.cc)]
        messages.append(
            {
                "ticket_number": ticket.number,
                "direction": "outbound",
                "author_kind": draft.author_kind,
                "message_id": message_id,
                # unique until the bytes exist; the sender puts the real key in place
                "dedup_key": dedup_key(message_id, ""),
                "content_hash": "",
                "from_addr": from_address,
                "from_name": spec.from_name,
                "to_addrs": ", ".join(a.addr_spec for a in draft.to),
                "cc_addrs": ", ".join(a.addr_spec for a in draft.cc),
                "subject": spec.subject,
                "date": now,
                "stored_at": now,
                "source": f"outbound:{draft.kind}",
                "verdict": draft.verdict[:1000],
                "size": 0,
                "body_text": draft.body,
                "raw": b"",
            }
        )
        rows.append(
            {
                "ticket_number": ticket.number,
                "kind": draft.kind,
                "mail_from": from_address,
                "rcpt_tos": ",".join(recipients),
                "rcpt_key": recipients[0][:320],
                "spec": spec.to_json(),
                "state": "queued",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
        log.info("ticket #%s: queued %s to %s", ticket.number, draft.kind, ", ".join(recipients))
    repo.queue_outbound(session, ticket.number, messages, rows)
    ticket.updated_at = now


def pending(
    config: OutboundConfig, ticket: Ticket, draft: Draft, message_id: str, now: datetime
) -> Pending:
    """Every header value of the mail, final (SPEC section 2); sets the ticket's Thread-Index."""
    if ticket.thread_index is None:
        # set once, so threading by Thread-Index finds the ticket whatever client answers
        ticket.thread_index = conversation_id(ticket.token, ticket.created_at).hex()
    from_address, from_name = config.sender(ticket.queue)
    return Pending(
        kind=draft.kind,
        ticket=ticket.number,
        message_id=message_id,
        at=now,
        from_address=from_address,
        from_name=header_safe(draft.from_name, 200),
        to=[box_of(a) for a in draft.to],
        cc=[box_of(a) for a in draft.cc],
        subject=header_safe(config.tagger.tagged(header_safe(draft.subject), ticket.number)),
        reply_name=header_safe(from_name, 200),
        reply_to=config.tokens.address(ticket.token, from_address),
        topic=header_safe(ticket.subject) or "(no subject)",
        conversation=_conversation(ticket).hex(),
        loop=header_safe(config.identity),
        body=draft.body,
        in_reply_to=draft.in_reply_to,
        auto_submitted=draft.auto_submitted,
        attach_pk=draft.attach_pk,
    )


def _conversation(ticket: Ticket) -> bytes:
    try:
        block = bytes.fromhex(ticket.thread_index or "")
    except ValueError:
        block = b""
    return block if len(block) == 22 else conversation_id(ticket.token, ticket.created_at)
