"""Mail that tells somebody what happened to a ticket: rule notices, reminders and escalations
(sweeps), SLA breaches, refused agent commands, and replies that never reached the customer.

Each is queued in the transaction that records its cause (see `mailbridge.outbound`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailbridge import lifecycle, mailtext
from mailbridge.mailtext import header_safe, mailbox, render, reply_subject
from mailbridge.outbound import drafts
from mailbridge.outbound.config import OutboundConfig
from mailbridge.outbound.drafts import RELAYED_BY, Draft
from mailbridge.outbound.recipients import Unreachable, agent_recipients, customer_recipients
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.parse import ParsedMessage
    from mailbridge.storage import Session
    from mailbridge.storage.models import Message, Outbox, Ticket

log = logging.getLogger("mailbridge.outbound")


class Notices:
    """The notices the rules, the SLA sweep and the outbox sender queue; `Outbound` adds ingest's."""

    def __init__(self, config: OutboundConfig) -> None:
        self.config = config

    def configure(self, settings: Settings) -> None:
        """Take reloaded settings."""
        self.config = OutboundConfig.from_settings(settings)

    def refused(
        self,
        session: Session,
        ticket: Ticket,
        agent: str,
        reasons: list[str],
        parsed: ParsedMessage,
        now: datetime,
    ) -> None:
        """Tell an agent that a command was refused, and why."""
        to = mailbox("", agent)
        if to is None:
            return
        values = self._values(ticket) | {"reasons": "\n".join(f"  - {r}" for r in reasons)}
        subject, body = render(mailtext.template("refused"), values)
        draft = Draft(
            kind="notice",
            author_kind="system",
            to=[to],
            subject=subject or reply_subject(parsed.subject or ticket.subject),
            body=body,
            from_name=self._from_name(ticket),
            in_reply_to=parsed.message_id,
            auto_submitted="auto-replied",
            verdict=f"refused: {'; '.join(reasons)}",
        )
        self._queue(session, ticket, [draft], now)

    def rule_notice(
        self,
        session: Session,
        ticket: Ticket,
        rule: str,
        now: datetime,
        template: Path | None = None,
    ) -> None:
        """Tell the customer a rule changed their ticket (`[[rules]] notify = true`)."""
        if ticket.status in ("spam", "deleted"):
            return  # never write to the sender of spam
        to, cc = customer_recipients(session, self.config, ticket)
        if not to:
            return
        values = self._values(ticket) | {"rule": rule, "confirm": self._confirm_hint(ticket)}
        subject, body = render(_text(template, "rule"), values)
        draft = Draft(
            kind="rule",
            author_kind="system",
            to=to,
            cc=cc,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self._from_name(ticket),
            in_reply_to=repo.last_customer_message_id(session, ticket.number),
            auto_submitted="auto-generated",
            verdict=f"rule:{rule}",
        )
        self._queue(session, ticket, [draft], now)

    def rule_mail(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        values: dict[str, object],
        now: datetime,
        template: Path | None = None,
        recipients: list[str] | None = None,
    ) -> None:
        """A `remind` (to the customer) or `escalate` (to `recipients`) mail of a rule (SPEC 8),
        queued in the transaction that records its event."""
        if recipients is None:
            to, cc = customer_recipients(session, self.config, ticket)
        else:
            to = [b for b in (mailbox("", a) for a in dict.fromkeys(recipients)) if b]
            cc = []
        if not to:
            return
        subject, body = render(_text(template, kind), self._values(ticket) | values)
        draft = Draft(
            kind="rule" if recipients is None else "notice",
            author_kind="system",
            to=to,
            cc=cc,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.config.from_name,
            in_reply_to=(
                repo.last_customer_message_id(session, ticket.number)
                if recipients is None
                else None
            ),
            auto_submitted="auto-generated",
            verdict=f"rule:{values.get('rule')} {kind}",
        )
        self._queue(session, ticket, [draft], now)

    def queue_notify_addresses(self, ticket: Ticket) -> list[str]:
        """Whom "queue" means for a ticket: its queue's notify (SPEC 7), else `[agents] notify`."""
        return list(self.config.notify_of(ticket.queue))

    def sla_breach_notice(
        self, session: Session, ticket: Ticket, values: dict[str, object], now: datetime
    ) -> None:
        """Tell the agents a ticket missed an SLA target (SPEC 8), in the breach's transaction.

        Goes to the ticket's owner when it has one, else to its queue's notify addresses."""
        boxes = agent_recipients(self.config, ticket)
        if not boxes:
            return
        subject, body = render(mailtext.template("sla_breach"), self._values(ticket) | values)
        draft = Draft(
            kind="notice",
            author_kind="system",
            to=boxes,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.config.from_name,
            in_reply_to=None,
            auto_submitted="auto-generated",
            verdict=f"sla breach: {values.get('target')}",
        )
        self._queue(session, ticket, [draft], now)

    def delivery_failed(
        self, session: Session, ticket: Ticket, row: Outbox, error: str, now: datetime
    ) -> None:
        """Tell the agents, and the one who wrote it, that a relayed reply never reached the
        customer."""
        if row.kind != "relay":
            return  # only replies matter to agents; and never a notice about a notice
        author = None
        if row.message_pk is not None and (copy := repo.get_message(session, row.message_pk)):
            author = copy.verdict.removeprefix(RELAYED_BY) if copy.verdict else None
        self._failure_notice(session, ticket, row.rcpt_tos, error, author, now)

    def _not_relayed(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        agent: str,
        unreachable: Unreachable,
        others: bool,
        now: datetime,
    ) -> None:
        """Record on the ticket, and tell the agent, whom a reply cannot reach and why."""
        for address, why in unreachable:
            log.warning("ticket #%s: reply not relayed to %s: %s", ticket.number, address, why)
        error = "; ".join(f"{a}: {why}" for a, why in unreachable)
        if others:
            error += " (the other recipients get the reply)"
        detail = f"relay to {', '.join(a for a, _ in unreachable)}: {error}"
        record = lifecycle.Record(
            now, lifecycle.Note.DELIVERY_FAILED, "outbox", None, None, detail[:2000]
        )
        repo.add_events(session, ticket.number, [record], message.id)
        self._failure_notice(
            session, ticket, ", ".join(a for a, _ in unreachable), error, agent, now
        )

    def _failure_notice(
        self,
        session: Session,
        ticket: Ticket,
        recipients: str,
        error: str,
        author: str | None,
        now: datetime,
    ) -> None:
        to = agent_recipients(self.config, ticket)
        box = mailbox("", author) if author else None
        if box is not None and all(a.addr_spec.lower() != box.addr_spec.lower() for a in to):
            to.append(box)
        if not to:
            return
        values = self._values(ticket) | {"recipients": recipients, "error": header_safe(error, 500)}
        subject, body = render(mailtext.template("failed"), values)
        draft = Draft(
            kind="notice",
            author_kind="system",
            to=to,
            subject=subject or f"Undelivered reply: {ticket.subject}",
            body=body,
            from_name=self._from_name(ticket),
            in_reply_to=None,
            auto_submitted="auto-generated",
            verdict=f"delivery failed: {error}"[:500],
        )
        self._queue(session, ticket, [draft], now)

    def _confirm_hint(self, ticket: Ticket) -> str:
        """How the customer closes a resolved ticket themselves (SPEC 8), else nothing."""
        words = self.config.customer_close_words
        if ticket.status != "resolved" or not words:
            return ""
        return (
            f'If your problem is solved, reply with just the word "{words[0]}" to close the '
            "ticket.\n"
        )

    # --- shared with `Outbound` ----------------------------------------------------------

    def _from_name(self, ticket: Ticket) -> str:
        return self.config.sender(ticket.queue)[1]

    def _values(self, ticket: Ticket) -> dict[str, object]:
        return drafts.values(self.config, ticket)

    def _queue(self, session: Session, ticket: Ticket, queued: list[Draft], now: datetime) -> None:
        drafts.queue(session, self.config, ticket, queued, now)


def _text(path: Path | None, name: str) -> str:
    """A rule's own template file, else the bundled one."""
    return path.read_text("utf-8") if path else mailtext.template(name)
