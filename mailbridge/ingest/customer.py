"""Customer mail: a reply on its ticket (or a confirmation that closes it, SPEC 8), else a new
ticket, flood-guarded and acknowledged."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge.envelope import Outcome
from mailbridge.ingest.batch import park
from mailbridge.ingest.mail import Prepared, actor, sender
from mailbridge.lifecycle import Kind, Note, Status
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.clock import Clock
    from mailbridge.ingest.match import Decision
    from mailbridge.ingest.tickets import Tickets
    from mailbridge.outbound.decide import Outbound
    from mailbridge.rules import Verdict
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.ingest")


class CustomerMail:
    def __init__(self, tickets: Tickets, outbound: Outbound | None, clock: Clock) -> None:
        self.tickets = tickets
        self.settings = tickets.settings
        self.outbound = outbound
        self.clock = clock

    def handle(
        self, session: Session, p: Prepared, verdict: Verdict, found: Decision, now: datetime
    ) -> Outcome:
        ticket, who = found.ticket, actor(p)
        if ticket is not None:
            kind = Kind.CONFIRM if self._confirms(session, p, ticket) else Kind.CUSTOMER_MAIL
            # the table accepts customer mail in every status: this cannot raise
            transition = lifecycle.apply(repo.ticket_state(ticket), lifecycle.Event(kind, who), now)
            if not transition.new_ticket:
                why = verdict.with_hits(f"{found.rule}; {verdict.rule}")
                message = self.tickets.store_message(
                    session, p, ticket, "inbound", "customer", why, now
                )
                repo.save_transition(session, ticket, transition, now, message.id)
                ticket.last_activity_at = now
                self._note_claimed_agent(session, ticket, verdict, who, now, message.id)
                if self.outbound and p.source.live:
                    self.outbound.customer_reply(session, ticket, message, p.parsed, now)
                return Outcome(
                    "appended", ticket.number, f"{found.rule} -> {ticket.status}", message.id
                )
            follow = ticket.number
            rule = f"{found.rule}; ticket #{follow} is {ticket.status} -> new ticket linked"
        else:
            follow, rule = None, found.rule
        if p.source.live:
            limit = self.settings.tickets.max_new_per_sender_per_hour
            address = sender(p)
            since = now - timedelta(hours=1)
            if address and repo.count_new_tickets_from(session, address, since, limit) >= limit:
                why = f"more than {limit} new tickets from {address} in an hour"
                return park(session, p, "flood", why, self.clock())
        ticket, message, routed = self.tickets.create(
            session, p, verdict, verdict.with_hits(rule), now, follow
        )
        self._note_claimed_agent(session, ticket, verdict, who, now, message.id)
        if self.outbound and p.source.live and ticket.status != Status.SPAM:
            self.outbound.new_ticket(session, ticket, message, p.parsed, verdict, now)
        return Outcome("created", ticket.number, f"{rule}; {routed}", message.id)

    def _confirms(self, session: Session, p: Prepared, ticket: Ticket) -> bool:
        """A close word from the ticket's customer or a participant on a resolved ticket (SPEC 8)."""
        if ticket.status != Status.RESOLVED or p.parsed is None:
            return False
        if not lifecycle.confirms(p.parsed.body_text, self.settings.tickets.customer_close_words):
            return False
        address = sender(p)
        return address == ticket.customer or repo.is_participant(session, ticket.number, address)

    def _note_claimed_agent(
        self,
        session: Session,
        ticket: Ticket,
        verdict: Verdict,
        who: str,
        now: datetime,
        message_pk: int,
    ) -> None:
        if verdict.claimed_agent:
            log.warning(
                "mail from %s claims an agent address without authentication: treated as customer mail",
                who,
            )
            record = lifecycle.Record(
                now,
                Note.UNAUTHENTICATED_AGENT,
                who,
                ticket.status,
                ticket.status,
                "agent From without authentication: treated as customer mail",
            )
            repo.add_events(session, ticket.number, [record], message_pk)
