"""Decides outgoing mail (acknowledgements, notifications, relayed replies, notices) and queues it.

Every method runs inside the caller's unit of work: the outbox row, the outbound copy stored on
the ticket and the index of its Message-ID commit with the change that caused them, or not at
all. What the mail says is decided here, down to every header value (a `compose.Pending`, kept on
the outbox row); its MIME bytes are written by `sender.py` just before delivery, and stored then
on the outbox row and the ticket's copy. Delivery is `sender.py`'s job too.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailbridge import (
    lifecycle,
)
from mailbridge import rules as classify
from mailbridge.clock import Clock, system_clock
from mailbridge.fingerprint import dedup_key
from mailbridge.mailtext import (
    FOOTER_COMMANDS,
    FOOTER_MARK,
    TEMPLATES,
    header_safe,
    mailbox,
    render,
    reply_subject,
    strip_footer,
)
from mailbridge.mailtext import template as _template
from mailbridge.outbound.compose import (
    MAX_REFERENCES,
    Part,
    Pending,
    attachments_of,
    box_of,
    compose,
    conversation_id,
    thread_index,
    trim_references,
    write,
)
from mailbridge.storage import repo
from mailbridge.storage.models import Message, Outbox, Ticket

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mailbridge.parse import ParsedMessage
    from mailbridge.rules import Verdict
    from mailbridge.storage import Session

__all__ = [  # the pure helpers live in mailtext/compose; callers and tests know them from here
    "FOOTER_COMMANDS",
    "FOOTER_MARK",
    "MAX_REFERENCES",
    "TEMPLATES",
    "Draft",
    "Outbound",
    "Part",
    "attachments_of",
    "conversation_id",
    "header_safe",
    "mailbox",
    "render",
    "reply_subject",
    "strip_footer",
    "thread_index",
    "trim_references",
]

log = logging.getLogger("mailbridge.outbound.decide")

# RFC 3834 5.1: never answer these automatically (lists, daemons, no-reply boxes)
_NO_AUTO_REPLY = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|no-?reply|do-?not-?reply|bounces?)$"
    r"|^owner-|-(request|bounces?|owner)$",
    re.IGNORECASE,
)
_HOUR = timedelta(hours=1)


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
    # queued mail carries the attachments of the stored message `attach_pk` (written by the
    # sender); `attachments` are for `build`/`_render` alone
    attach_pk: int | None = None
    attachments: list[Part] = field(default_factory=list)


class Outbound:
    """Queues mail for a ticket; the hooks ingest, the actions and the rules call."""

    def __init__(self, settings: Any, clock: Clock | None = None) -> None:
        self.clock = clock or system_clock
        self.configure(settings)

    def configure(self, settings: Any) -> None:
        """(Re)read what outbound mail derives from the config; called again on reload."""
        self.settings = settings
        out, tickets, agents = settings.outbound, settings.tickets, settings.agents
        self.from_address = (out.from_address or settings.smtp.addresses[0]).lower()
        self.domain = self.from_address.rpartition("@")[2]
        self.identity = out.identity or self.from_address
        self.tokens = settings.addressing.tokens
        self.tagger = settings.addressing.tagger
        self.agents = classify.Policy(
            agent_addresses=frozenset(a.lower() for a in agents.addresses),
            agent_domains=frozenset(d.lower().lstrip("@") for d in agents.domains),
        )
        self.trusted_authserv_ids = frozenset(a.lower() for a in agents.trusted_authserv_ids)
        self.notify = [a for a in agents.notify if not self.tokens.is_ours(a)]
        custom = tickets.ack_template
        self.ack_template = Path(custom).read_text("utf-8") if custom else _template("ack")
        # per queue (SPEC 7): who hears of its tickets, and its own acknowledgement text
        self.queue_notify: dict[str, list[str]] = {}
        self.queue_ack: dict[str, str] = {}
        for queue in settings.queue_list:
            notify = settings.queue_notify(queue.name)
            self.queue_notify[queue.name] = [a for a in notify if not self.tokens.is_ours(a)]
            if queue.ack_template is not None:
                self.queue_ack[queue.name] = Path(queue.ack_template).read_text("utf-8")
        self.all_notify = {a for n in self.queue_notify.values() for a in n} | set(self.notify)

    # --- the hooks ---------------------------------------------------------------------

    def new_ticket(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        verdict: Verdict,
        now: datetime,
    ) -> None:
        """Acknowledge to the customer (when allowed) and notify agents."""
        drafts = []
        why_not = self._no_ack_reason(session, ticket, verdict, parsed, now)
        if why_not:
            log.info("ticket #%s: no acknowledgement: %s", ticket.number, why_not)
        else:
            drafts.append(self._ack(ticket, message))
        drafts += self._notification(ticket, message, parsed, "New ticket")
        self._queue(session, ticket, drafts, now)

    def customer_reply(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        now: datetime,
    ) -> None:
        """Notify agents of a customer's reply."""
        self._queue(
            session, ticket, self._notification(ticket, message, parsed, "Customer reply"), now
        )

    def relay(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage,
        text: str,
        agent: str,
        now: datetime,
    ) -> None:
        """Relay an agent's reply to the ticket's customer and participants, and nobody else.

        An address the reply cannot go to is never passed over in silence: the agent gets a
        notice saying why, and the ticket an event."""
        to, cc, unreachable = self._relay_recipients(session, ticket)
        if not to:  # the customer's address is unusable: the first participant takes its place
            to, cc = cc[:1], cc[1:]
        if unreachable:
            self._not_relayed(session, ticket, message, agent, unreachable, bool(to), now)
        if not to:
            log.warning(
                "ticket #%s: no deliverable customer address; reply not relayed", ticket.number
            )
            return
        name = parsed.from_.name if parsed.from_ and parsed.from_.name else agent.partition("@")[0]
        from_name = self._from_name(ticket)
        if self.settings.agents.display_names:
            from_name = f"{name} via {from_name}"
        # addresses only SMTPUTF8 can carry go as a mail of their own: should the smarthost
        # not offer it, that mail fails (with a notice) and the others still get the reply
        everyone = [*to, *cc]
        groups = [
            [a for a in everyone if a.addr_spec.isascii()],
            [a for a in everyone if not a.addr_spec.isascii()],
        ]
        in_reply_to = self._last_customer_id(session, ticket)
        drafts = [
            Draft(
                kind="relay",
                author_kind="agent",
                to=group[:1],
                cc=group[1:],
                subject=reply_subject(ticket.subject),
                body=text.rstrip() + "\n",
                from_name=from_name,
                in_reply_to=in_reply_to,
                auto_submitted=None,
                attach_pk=message.id,
                verdict=f"{_RELAYED_BY}{agent}",
            )
            for group in groups
            if group
        ]
        self._queue(session, ticket, drafts, now)

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
        subject, body = render(_template("refused"), values)
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
        to, cc = self._customer_recipients(session, ticket)
        if not to:
            return
        values = self._values(ticket) | {"rule": rule, "confirm": self._confirm_hint(ticket)}
        text = template.read_text("utf-8") if template else _template("rule")
        subject, body = render(text, values)
        draft = Draft(
            kind="rule",
            author_kind="system",
            to=to,
            cc=cc,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self._from_name(ticket),
            in_reply_to=self._last_customer_id(session, ticket),
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
            to, cc = self._customer_recipients(session, ticket)
        else:
            to = [b for b in (mailbox("", a) for a in dict.fromkeys(recipients)) if b]
            cc = []
        if not to:
            return
        text = template.read_text("utf-8") if template else _template(kind)
        subject, body = render(text, self._values(ticket) | values)
        draft = Draft(
            kind="rule" if recipients is None else "notice",
            author_kind="system",
            to=to,
            cc=cc,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.settings.outbound.from_name,
            in_reply_to=self._last_customer_id(session, ticket) if recipients is None else None,
            auto_submitted="auto-generated",
            verdict=f"rule:{values.get('rule')} {kind}",
        )
        self._queue(session, ticket, [draft], now)

    def queue_notify_addresses(self, ticket: Ticket) -> list[str]:
        """Whom "queue" means for a ticket: its queue's notify (SPEC 7), else `[agents] notify`."""
        # __init__ always sets queue_notify; the fallback read a `notify_boxes` nobody defines
        return list(self.queue_notify.get(ticket.queue, self.notify))

    def _owner_or_queue(self, ticket: Ticket) -> list[Address]:
        """The ticket's owner when it has one, else its queue's notify addresses."""
        owner = getattr(ticket, "owner", None)
        addresses = [owner] if owner else self.queue_notify_addresses(ticket)
        boxes = [b for b in (mailbox("", a) for a in addresses) if b]
        return boxes[: self.settings.smtp.max_recipients]

    def sla_breach_notice(
        self, session: Session, ticket: Ticket, values: dict[str, object], now: datetime
    ) -> None:
        """Tell the agents a ticket missed an SLA target (SPEC 8), in the breach's transaction.

        Goes to the ticket's owner when tickets have one, else to the queue's (for now the
        `[agents] notify`) addresses."""
        boxes = self._owner_or_queue(ticket)
        if not boxes:
            return
        subject, body = render(_template("sla_breach"), self._values(ticket) | values)
        draft = Draft(
            kind="notice",
            author_kind="system",
            to=boxes,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.settings.outbound.from_name,
            in_reply_to=None,
            auto_submitted="auto-generated",
            verdict=f"sla breach: {values.get('target')}",
        )
        self._queue(session, ticket, [draft], now)

    def _confirm_hint(self, ticket: Ticket) -> str:
        """How the customer closes a resolved ticket themselves (SPEC 8), else nothing."""
        words = self.settings.tickets.customer_close_words
        if ticket.status != "resolved" or not words:
            return ""
        return (
            f'If your problem is solved, reply with just the word "{words[0]}" to close the '
            "ticket.\n"
        )

    def delivery_failed(
        self, session: Session, ticket: Ticket, row: Outbox, error: str, now: datetime
    ) -> None:
        """Tell the agents, and the one who wrote it, that a relayed reply never reached the
        customer."""
        if row.kind != "relay":
            return  # only replies matter to agents; and never a notice about a notice
        author = None
        if row.message_pk is not None and (copy := repo.get_message(session, row.message_pk)):
            author = copy.verdict.removeprefix(_RELAYED_BY) if copy.verdict else None
        self._failure_notice(session, ticket, row.rcpt_tos, error, author, now)

    def _not_relayed(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        agent: str,
        unreachable: list[tuple[str, str]],
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
        to = self._notify_addresses(ticket)
        box = mailbox("", author) if author else None
        if box is not None and all(a.addr_spec.lower() != box.addr_spec.lower() for a in to):
            to.append(box)
        if not to:
            return
        values = self._values(ticket) | {
            "recipients": recipients,
            "error": header_safe(error, 500),
        }
        subject, body = render(_template("failed"), values)
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

    def strip_footer(self, text: str) -> str:
        return strip_footer(text)

    # --- what to send --------------------------------------------------------------------

    def _no_ack_reason(
        self,
        session: Session,
        ticket: Ticket,
        verdict: Verdict,
        parsed: ParsedMessage | None,
        now: datetime,
    ) -> str | None:
        customer = ticket.customer
        settings = self.settings.tickets
        limit = settings.ack_max_per_sender_per_hour
        if not self.settings.tickets.acknowledge:
            return "acknowledgements are off"
        if not verdict.acknowledge:  # a rule hit (bulk, auto-reply, ...) forbids it
            return f"not personal mail ({verdict.rule})"
        if self.tokens.is_ours(customer) or customer in self.all_notify:
            return f"{customer} is our own address"
        if verdict.claimed_agent or classify.is_agent_address(customer, self.agents):
            return f"{customer} is an agent address"
        if _NO_AUTO_REPLY.search(customer.partition("@")[0]) or mailbox("", customer) is None:
            return f"{customer} must not get automatic replies"
        if dmarc_failed(verdict, parsed, self.trusted_authserv_ids):
            return "the From domain failed DMARC: the sender is likely forged"
        since = now - _HOUR
        if repo.count_outbox_to(session, "ack", customer, since, limit) >= limit:
            return f"already {limit} acknowledgements to {customer} this hour"
        domain = customer.rpartition("@")[2]
        per_domain = settings.ack_max_per_domain_per_hour
        if repo.count_outbox_kind(session, "ack", since, per_domain, domain) >= per_domain:
            return f"already {per_domain} acknowledgements to @{domain} this hour"
        total = settings.ack_max_per_hour
        if repo.count_outbox_kind(session, "ack", since, total) >= total:
            return f"already {settings.ack_max_per_hour} acknowledgements this hour"
        return None

    def _ack(self, ticket: Ticket, message: Message) -> Draft:
        template = self.queue_ack.get(ticket.queue, self.ack_template)
        subject, body = render(template, self._values(ticket))
        to = mailbox(ticket.customer_name, ticket.customer)
        assert to is not None  # _no_ack_reason checked it
        return Draft(
            kind="ack",
            author_kind="system",
            to=[to],
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self._from_name(ticket),
            in_reply_to=message.message_id,
            auto_submitted="auto-replied",
            verdict="acknowledgement",
        )

    def _notification(
        self, ticket: Ticket, message: Message, parsed: ParsedMessage | None, what: str
    ) -> list[Draft]:
        """The customer's mail with its attachments, from "<customer> via Support", to the agents."""
        # nobody is notified of their own mail: a notify list's naive autoresponder cannot loop
        to = [
            a
            for a in self._notify_addresses(ticket)
            if a.addr_spec.lower() != message.from_addr.lower()
        ]
        if not to:
            return []
        sender = header_safe(message.from_name) or message.from_addr or ticket.customer
        tag = self.tagger.format(ticket.number)
        about = f"{what} {tag} ({ticket.status}) from {sender} <{message.from_addr}>"
        footer = f"-- \n{FOOTER_MARK}\n{about}\n{FOOTER_COMMANDS}\n"
        body = (parsed.body_text if parsed else "").rstrip()
        draft = Draft(
            kind="notify",
            author_kind="system",
            to=to,
            subject=header_safe(message.subject) or ticket.subject or "(no subject)",
            body=f"{body}\n\n{footer}" if body else footer,
            from_name=f"{sender} via {self._from_name(ticket)}",
            in_reply_to=message.message_id,
            auto_submitted="auto-generated",
            attach_pk=message.id,
            verdict=f"notification: {what.lower()}",
        )
        return [draft]

    def _notify_addresses(self, ticket: Ticket) -> list[Address]:
        """The owner when the ticket has one, else its queue's notify list (SPEC 7)."""
        if ticket.owner:
            addresses = [ticket.owner]
        else:
            addresses = self.queue_notify.get(ticket.queue, self.notify)
        boxes = [a for a in (mailbox("", n) for n in addresses) if a]
        return boxes[: self.settings.smtp.max_recipients]

    def _from(self, ticket: Ticket) -> str:
        return self.settings.queue_sender(ticket.queue)[0]

    def _from_name(self, ticket: Ticket) -> str:
        return self.settings.queue_sender(ticket.queue)[1]

    def _relay_recipients(
        self, session: Session, ticket: Ticket
    ) -> tuple[list[Address], list[Address], list[tuple[str, str]]]:
        """Like `_customer_recipients`, also with addresses only SMTPUTF8 can carry (the sender
        fails them with a notice when the smarthost does not offer it); the addresses that
        cannot be written at all come third, with the reason."""
        to: list[Address] = []
        cc: list[Address] = []
        unreachable: list[tuple[str, str]] = []
        for address in repo.participants(session, ticket.number):
            if self.tokens.is_ours(address) or classify.is_agent_address(address, self.agents):
                continue
            is_customer = address == ticket.customer
            name = ticket.customer_name if is_customer else ""
            box = mailbox(name, address) or utf8_mailbox(name, address)
            if box is None:
                unreachable.append((address, "the address cannot be written safely in a header"))
            else:
                (to if is_customer else cc).append(box)
        limit = min(self.settings.tickets.max_participants, self.settings.smtp.max_recipients)
        return to[:limit], cc[: max(0, limit - len(to[:limit]))], unreachable

    def _customer_recipients(
        self, session: Session, ticket: Ticket
    ) -> tuple[list[Address], list[Address]]:
        """The customer (To) and the other participants (Cc): the only addresses a relay reaches,
        at most `max_participants` and `max_recipients` of them (tickets from before the limit
        may hold more)."""
        to: list[Address] = []
        cc: list[Address] = []
        for address in repo.participants(session, ticket.number):
            if self.tokens.is_ours(address) or classify.is_agent_address(address, self.agents):
                continue  # never mail ourselves, and agents get notifications instead
            is_customer = address == ticket.customer
            box = mailbox(ticket.customer_name if is_customer else "", address)
            if box is not None:
                (to if is_customer else cc).append(box)
        limit = min(self.settings.tickets.max_participants, self.settings.smtp.max_recipients)
        return to[:limit], cc[: max(0, limit - len(to[:limit]))]

    def _last_customer_id(self, session: Session, ticket: Ticket) -> str | None:
        return repo.last_customer_message_id(session, ticket.number)

    def _values(self, ticket: Ticket) -> dict[str, object]:
        return {
            "number": ticket.number,
            "tag": self.tagger.format(ticket.number),
            "subject": header_safe(ticket.subject) or "(no subject)",
            "status": ticket.status,
            "customer": ticket.customer,
            "name": header_safe(ticket.customer_name) or ticket.customer,
            "reply_to": self.tokens.address(ticket.token, self._from(ticket)),
            "from_name": self._from_name(ticket),
        }

    # --- headers, storage, outbox -------------------------------------------------------

    def _queue(self, session: Session, ticket: Ticket, drafts: list[Draft], now: datetime) -> None:
        """Store the outbound copies on the ticket, index their Message-IDs, queue their outbox
        rows: three statements for any number of drafts.

        The copies' raw bytes (and their hash, size and attachment rows) are filled in by the
        sender when it writes the mail."""
        if not drafts:
            return
        messages, rows = [], []
        for draft in drafts:
            if draft.attachments:
                raise ValueError("queued mail takes its attachments from attach_pk")
            message_id = f"{secrets.token_hex(16)}@{self.domain}"
            pending = self.pending(ticket, draft, message_id, now)
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
                    "from_addr": self._from(ticket),
                    "from_name": pending.from_name,
                    "to_addrs": ", ".join(a.addr_spec for a in draft.to),
                    "cc_addrs": ", ".join(a.addr_spec for a in draft.cc),
                    "subject": pending.subject,
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
                    "mail_from": self._from(ticket),
                    "rcpt_tos": ",".join(recipients),
                    "rcpt_key": recipients[0][:320],
                    "spec": pending.to_json(),
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
            log.info(
                "ticket #%s: queued %s to %s", ticket.number, draft.kind, ", ".join(recipients)
            )
        repo.queue_outbound(session, ticket.number, messages, rows)
        ticket.updated_at = now

    def pending(self, ticket: Ticket, draft: Draft, message_id: str, now: datetime) -> Pending:
        """Every header value of the mail, final (SPEC section 2); sets the ticket's Thread-Index."""
        if ticket.thread_index is None:
            # set once, so threading by Thread-Index finds the ticket whatever client answers
            ticket.thread_index = conversation_id(ticket.token, ticket.created_at).hex()
        return Pending(
            kind=draft.kind,
            ticket=ticket.number,
            message_id=message_id,
            at=now,
            from_address=self._from(ticket),
            from_name=header_safe(draft.from_name, 200),
            to=[box_of(a) for a in draft.to],
            cc=[box_of(a) for a in draft.cc],
            subject=header_safe(self.tagger.tagged(header_safe(draft.subject), ticket.number)),
            reply_name=header_safe(self._from_name(ticket), 200),
            reply_to=self.tokens.address(ticket.token, self._from(ticket)),
            topic=header_safe(ticket.subject) or "(no subject)",
            conversation=_conversation(ticket).hex(),
            loop=header_safe(self.identity),
            body=draft.body,
            in_reply_to=draft.in_reply_to,
            auto_submitted=draft.auto_submitted,
            attach_pk=draft.attach_pk,
        )

    def build(
        self, ticket: Ticket, draft: Draft, message_id: str, known: Sequence[str], now: datetime
    ) -> EmailMessage:
        """The mail as it would go out now; `known` are the ticket's Message-IDs."""
        return compose(self.pending(ticket, draft, message_id, now), known, draft.attachments)

    def _render(
        self, ticket: Ticket, draft: Draft, message_id: str, known: Sequence[str], now: datetime
    ) -> tuple[EmailMessage, bytes] | None:
        """Build and serialise, as the sender does (with its fallback for unwritable parts)."""
        written = write(self.pending(ticket, draft, message_id, now), known, draft.attachments)
        return (written.message, written.raw) if written else None


_RELAYED_BY = "relayed reply of "  # the verdict of a relay's copy names its agent
# an internationalised address (RFC 6531): any non-ASCII, none of the characters that need
# quoting or could end the address
_UTF8_ATOM = re.compile(r"[^\x00-\x20\x7f\x85\u2028\u2029\"(),:;<>@\[\\\]]+")


def utf8_mailbox(name: str, address: str) -> Address | None:
    """An address with non-ASCII characters that SMTPUTF8 can carry as it is, else None."""
    local, at, domain = address.rpartition("@")
    if address.isascii() or not at or not local or not domain:
        return None
    if not all(_UTF8_ATOM.fullmatch(p) for p in (*local.split("."), *domain.split("."))):
        return None
    try:
        return Address(display_name=header_safe(name, 200), username=local, domain=domain)
    except Exception:  # the email package raises several kinds for malformed addresses
        return None


_AR_COMMENT = re.compile(r"\([^()]*\)")


def dmarc_failed(verdict: Verdict, parsed: ParsedMessage | None, trusted: frozenset[str]) -> bool:
    """Whether the mail failed DMARC by the word of an Authentication-Results header we trust.

    The classifier's own fact wins when it offers one. Otherwise only the topmost header with a
    trusted authserv-id counts (RFC 8601 section 5: the border MTA adds it on top; anything
    below may be the sender's own), read with its comments removed."""
    known = getattr(verdict, "dmarc_failed", None)
    if known is not None:
        return bool(known)
    if parsed is None or not trusted:
        return False
    for value in parsed.headers.get("authentication-results", ()):
        text = value
        while (stripped := _AR_COMMENT.sub(" ", text)) != text:  # comments nest
            text = stripped
        authserv, *results = text.split(";")
        words = authserv.split()
        if not words or words[0].lower() not in trusted:
            continue
        return any(r.split() and r.split()[0].lower().startswith("dmarc=fail") for r in results)
    return False


def _conversation(ticket: Ticket) -> bytes:
    try:
        block = bytes.fromhex(ticket.thread_index or "")
    except ValueError:
        block = b""
    return block if len(block) == 22 else conversation_id(ticket.token, ticket.created_at)
