"""The rows ingest writes onto tickets: a new ticket (routed, assigned), a stored message, the
participants its To/Cc add, and lifecycle transitions."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge import rules as classify
from mailbridge.ingest.mail import Prepared, actor, author, sender
from mailbridge.lifecycle import Kind, Note, Status
from mailbridge.storage import repo
from mailbridge.storage.models import Attachment, Message, Ticket

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.ingest.route import Routes
    from mailbridge.parse import ParsedMessage
    from mailbridge.storage import Session

log = logging.getLogger("mailbridge.ingest")


def new_token() -> str:
    """80 random bits in lowercase base32: unguessable, and safe in a case-folding local part."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


class Tickets:
    """Writes tickets, messages and participants for one config."""

    def __init__(
        self,
        settings: Settings,
        policy: classify.Policy,
        routes: Routes,
        assigned: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.tokens = settings.addressing.tokens
        self.tagger = settings.addressing.tagger
        self.policy = policy
        self.routes = routes
        self.assigned = assigned  # told the strategy of each automatic assignment

    def create(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        rule: str,
        now: datetime,
        follow_up_of: int | None,
        direction: str = "inbound",
        author_kind: str = "customer",
    ) -> tuple[Ticket, Message, str]:
        """The new ticket, its first message, and how it was routed and assigned (in words)."""
        msg = p.parsed
        assert msg is not None
        wrote = author(msg)
        customer, name = sender(p), (wrote.name if wrote else "")
        if author_kind == "agent":
            others = [
                a
                for a in (*msg.to, *msg.cc)
                if not self.tokens.is_ours(a.addr)
                and not classify.is_agent_address(a.addr, self.policy)
            ]
            if others:
                customer, name = others[0].addr.lower(), others[0].name
        route = self.routes.route(p)
        spam = route.spam is not None or verdict.action is classify.Action.SPAM
        chosen = None if spam else self.routes.assign(session, route, customer, now)
        explained = chosen is not None and (chosen.owner or chosen.strategy != "none")
        routed = "; ".join((route.explain(), *([chosen.rule] if chosen and explained else [])))
        ticket = repo.add_ticket(
            session,
            Ticket(
                token=new_token(),
                status=Status.NEW,
                subject=self.tagger.strip(msg.subject)[:1000],
                customer=customer[:320] or "unknown",
                customer_name=name[:200],
                mailbox=self._mailbox(p)[:200],
                created_at=now,
                updated_at=now,
                last_activity_at=now,
                follow_up_of=follow_up_of,
                thread_index=msg.thread_index,
                queue=route.queue,
                owner=chosen.owner if chosen else None,
                priority=route.priority,
            ),
        )
        # the customer first: the participant limit counts them, and their Cc may then join
        repo.add_participants(session, ticket.number, [(ticket.customer, "customer")])
        message = self.store_message(
            session, p, ticket, direction, author_kind, rule, now, participants=False
        )
        repo.add_events(
            session,
            ticket.number,
            lifecycle.create(actor(p), now, f"{rule}; {routed}").records,
            message.id,
        )
        if route.tags:
            repo.add_tags(session, ticket.number, route.tags)
        if chosen is not None and chosen.owner is not None:
            record = lifecycle.Record(
                now, Note.ASSIGN, f"rule:{chosen.strategy}", Status.NEW, Status.NEW, chosen.detail
            )
            repo.add_events(session, ticket.number, [record], message.id)
            self.assigned(chosen.strategy)
        if route.spam is not None:
            self.transition(
                session, ticket, lifecycle.Event(Kind.SPAM, f"rule:{route.spam}"), now, message.id
            )
        if author_kind == "agent" and customer != sender(p):
            self.transition(
                session, ticket, lifecycle.Event(Kind.AGENT_REPLY, actor(p)), now, message.id
            )
        # whoever opens a ticket is its customer, or an agent writing to one
        self.add_participants(session, p, ticket, now, message.id)
        return ticket, message, routed

    def store_message(
        self,
        session: Session,
        p: Prepared,
        ticket: Ticket,
        direction: str,
        author_kind: str,
        verdict: str,
        now: datetime,
        participants: bool = True,
    ) -> Message:
        msg = p.parsed
        assert msg is not None
        message = repo.add_message(
            session,
            Message(
                ticket_number=ticket.number,
                direction=direction,
                author_kind=author_kind,
                message_id=msg.message_id,
                dedup_key=p.dedup_key,
                content_hash=p.content_hash,
                from_addr=(wrote.addr if (wrote := author(msg)) else "")[:320],
                from_name=wrote.name if wrote else "",
                to_addrs=", ".join(a.addr for a in msg.to),
                cc_addrs=", ".join(a.addr for a in msg.cc),
                subject=msg.subject,
                date=msg.date,
                stored_at=now,
                source=f"{p.source.kind}:{p.source.name}"[:200],
                verdict=verdict,
                size=len(p.raw),
                body_text=msg.body_text,
                raw=p.raw,
            ),
            [
                Attachment(filename=a.filename, content_type=a.content_type[:200], size=a.size)
                for a in msg.attachments
            ],
        )
        if msg.message_id:
            repo.add_thread_keys(session, ticket.number, [msg.message_id])
        if (
            participants
            and author_kind == "customer"
            and self._may_add_participants(session, p, ticket)
        ):
            self.add_participants(session, p, ticket, now, message.id)
        ticket.updated_at = now
        return message

    def transition(
        self,
        session: Session,
        ticket: Ticket,
        event: lifecycle.Event,
        now: datetime,
        message_pk: int | None,
    ) -> None:
        """Apply a lifecycle event to the ticket; raises IllegalTransition where the table refuses."""
        transition = lifecycle.apply(repo.ticket_state(ticket), event, now)
        repo.save_transition(session, ticket, transition, now, message_pk)

    def add_participants(
        self, session: Session, p: Prepared, ticket: Ticket, now: datetime, message_pk: int
    ) -> None:
        """The mail's To/Cc join the ticket, up to `[tickets] max_participants` in all."""
        assert p.parsed is not None
        candidates = self._cc_participants(p.parsed, ticket.customer)
        if not candidates:
            return
        present = set(repo.participants(session, ticket.number))
        new = [a for a in candidates if a not in present]
        limit = self.settings.tickets.max_participants
        room = max(0, limit - len(present))
        repo.add_participants(session, ticket.number, [(a, "cc") for a in new[:room]])
        if len(new) > room:
            dropped = len(new) - room
            log.warning(
                "ticket #%s: %d address(es) in To/Cc not added: max_participants is %d",
                ticket.number,
                dropped,
                limit,
            )
            if not room and any(
                e.kind == Note.PARTICIPANTS_LIMIT
                for e in repo.ticket_events(session, ticket.number)
            ):
                return  # said once on the ticket; a thread that keeps the crowd in Cc says no more
            detail = (
                f"{dropped} address(es) in To/Cc not added as participants: "
                f"the ticket has its limit of {limit} (max_participants)"
            )
            record = lifecycle.Record(
                now, Note.PARTICIPANTS_LIMIT, actor(p), ticket.status, ticket.status, detail
            )
            repo.add_events(session, ticket.number, [record], message_pk)

    def _cc_participants(self, msg: ParsedMessage, customer: str) -> list[str]:
        found: dict[str, None] = {}
        for a in (*msg.to, *msg.cc):
            address = a.addr.lower()
            if (
                "@" in address
                and len(address) <= 320
                and address != customer
                and not self.tokens.is_ours(address)
                and not classify.is_agent_address(address, self.policy)
            ):
                found[address] = None
        return list(found)

    def _may_add_participants(self, session: Session, p: Prepared, ticket: Ticket) -> bool:
        """Only the ticket's own people widen it: anyone who knows a Message-ID can thread a mail,
        and a stranger's Cc would then receive every later agent reply."""
        address = sender(p)
        return bool(address) and (
            address == ticket.customer or repo.is_participant(session, ticket.number, address)
        )

    def _mailbox(self, p: Prepared) -> str:
        """Where the ticket came in, for the report: the IMAP account, else the support address."""
        if p.source.kind in ("imap", "imap-sent"):
            return p.source.name
        msg = p.parsed
        addresses = [*p.envelope.rcpt_tos, *((a.addr for a in (*msg.to, *msg.cc)) if msg else ())]
        for address in addresses:
            if self.tokens.is_ours(address):
                base = address.lower()
                token = self.tokens.token_of(base)
                if token:
                    base = base.replace(f"{self.tokens.separator}{token}", "")
                return base
        return p.source.kind
