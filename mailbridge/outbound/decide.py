"""The mail ingest causes: acknowledgements, agents' notifications and relayed agent replies.

Decided in the ingest transaction and written later by the sender: see `mailbridge.outbound`.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailbridge import rules as classify
from mailbridge.mailtext import (
    FOOTER_COMMANDS,
    FOOTER_MARK,
    header_safe,
    mailbox,
    render,
    reply_subject,
    strip_footer,
)
from mailbridge.outbound.drafts import RELAYED_BY, Draft
from mailbridge.outbound.notices import Notices
from mailbridge.outbound.recipients import agent_recipients, relay_recipients
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.parse import ParsedMessage
    from mailbridge.rules import Verdict
    from mailbridge.storage import Session
    from mailbridge.storage.models import Message, Ticket

log = logging.getLogger("mailbridge.outbound")

# RFC 3834 5.1: never answer these automatically (lists, daemons, no-reply boxes)
_NO_AUTO_REPLY = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|no-?reply|do-?not-?reply|bounces?)$"
    r"|^owner-|-(request|bounces?|owner)$",
    re.IGNORECASE,
)
_HOUR = timedelta(hours=1)


class Outbound(Notices):
    """Queues mail for a ticket: the hooks ingest calls, on top of the notices of `Notices`."""

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
            # the listener's line is the message's one line at INFO; a limit or a forgery is
            # worth one more, acknowledgements switched off or a bulk mail are not
            routine = not self.config.acknowledge or not verdict.acknowledge
            log.log(
                logging.DEBUG if routine else logging.INFO,
                "ticket #%s: no acknowledgement: %s",
                ticket.number,
                why_not,
            )
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
        to, cc, unreachable = relay_recipients(session, self.config, ticket)
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
        if self.config.display_names:
            from_name = f"{name} via {from_name}"
        # addresses only SMTPUTF8 can carry go as a mail of their own: should the smarthost
        # not offer it, that mail fails (with a notice) and the others still get the reply
        everyone = [*to, *cc]
        groups = [
            [a for a in everyone if a.addr_spec.isascii()],
            [a for a in everyone if not a.addr_spec.isascii()],
        ]
        in_reply_to = repo.last_customer_message_id(session, ticket.number)
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
                verdict=f"{RELAYED_BY}{agent}",
            )
            for group in groups
            if group
        ]
        self._queue(session, ticket, drafts, now)

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
        config = self.config
        limit = config.ack_max_per_sender_per_hour
        if not config.acknowledge:
            return "acknowledgements are off"
        if not verdict.acknowledge:  # a rule hit (bulk, auto-reply, ...) forbids it
            return f"not personal mail ({verdict.rule})"
        if config.tokens.is_ours(customer) or customer in config.all_notify:
            return f"{customer} is our own address"
        if verdict.claimed_agent or classify.is_agent_address(customer, config.agents):
            return f"{customer} is an agent address"
        if _NO_AUTO_REPLY.search(customer.partition("@")[0]) or mailbox("", customer) is None:
            return f"{customer} must not get automatic replies"
        if dmarc_failed(parsed, config.trusted_authserv_ids):
            return "the From domain failed DMARC: the sender is likely forged"
        domain = customer.rpartition("@")[2]
        limits = (limit, config.ack_max_per_domain_per_hour, config.ack_max_per_hour)
        reached = repo.limit_reached(session, "ack", customer, now - _HOUR, limits)
        if reached == "recipient":
            return f"already {limit} acknowledgements to {customer} this hour"
        if reached == "domain":
            return f"already {limits[1]} acknowledgements to @{domain} this hour"
        if reached == "all":
            return f"already {limits[2]} acknowledgements this hour"
        return None

    def _ack(self, ticket: Ticket, message: Message) -> Draft:
        template = self.config.queue_ack.get(ticket.queue, self.config.ack_template)
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
            for a in agent_recipients(self.config, ticket)
            if a.addr_spec.lower() != message.from_addr.lower()
        ]
        if not to:
            return []
        sender = header_safe(message.from_name) or message.from_addr or ticket.customer
        tag = self.config.tagger.format(ticket.number)
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


_AR_COMMENT = re.compile(r"\([^()]*\)")


def dmarc_failed(parsed: ParsedMessage | None, trusted: frozenset[str]) -> bool:
    """Whether the mail failed DMARC by the word of an Authentication-Results header we trust.

    Only the topmost header with a trusted authserv-id counts (RFC 8601 section 5: the border
    MTA adds it on top; anything below may be the sender's own), read with its comments removed."""
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
