"""Builds outgoing mail (acknowledgements, notifications, relayed replies, notices) and queues it.

Every method runs inside the caller's unit of work: the outbox row, the outbound copy stored on
the ticket and the index of its Message-ID commit with the change that caused them, or not at
all. Delivery is `sender.py`'s job.

Header values go through the standard library's email API, which refuses CR/LF in a value; we
also replace line breaks and other control characters ourselves first, so a subject or display
name taken from customer mail can never start a header of its own.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailbridge import classify, correlate
from mailbridge.clock import Clock, system_clock
from mailbridge.fingerprint import content_hash, dedup_key
from mailbridge.storage import repository as repo
from mailbridge.storage.models import Attachment, Message, Outbox, Ticket

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailbridge.classify import Verdict
    from mailbridge.parse import ParsedMessage

log = logging.getLogger("mailbridge.outbound")
TEMPLATES = Path(__file__).parent / "templates"

# The footer of notifications. Agents answer above it; `strip_footer` finds this line again,
# quoted or not, and removes the quoted notification with it.
FOOTER_MARK = "mailbridge: reply above this line to answer the customer."
FOOTER_COMMANDS = "Commands on the first lines: #resolve #close #postpone 3d #note"
_MARK = re.compile(r"^mailbridge: reply above this line\b", re.IGNORECASE)
_QUOTED = re.compile(r"^\s*>")
_UNQUOTE = re.compile(r"^(?:\s*>)+ ?")
_ATTRIBUTION_START = re.compile(
    r"^\s*(on|am|le|el|il|op|den|på|em|w dniu)\b|-----\s*original message", re.IGNORECASE
)
_WROTE = re.compile(
    r"\b(wrote|schrieb|a écrit|escribió|scrisse|schreef|skrev|napisał|escreveu)\s*:\s*$",
    re.IGNORECASE,
)
_OUTLOOK_SEPARATOR = re.compile(
    r"^\s*(-{3,}\s*(original message|ursprüngliche nachricht|message d'origine)\s*-{3,}|_{10,})\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^\s*(from|von|de|van):\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*(sent|date|gesendet|datum|envoyé|to|an|à):\s", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
# line breaks of every kind (str.splitlines breaks on these) and other control characters
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]+")
# RFC 3834 5.1: never answer these automatically (lists, daemons, no-reply boxes)
_NO_AUTO_REPLY = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|no-?reply|do-?not-?reply|bounces?)$"
    r"|^owner-|-(request|bounces?|owner)$",
    re.IGNORECASE,
)
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
MAX_REFERENCES = 20
_HOUR = timedelta(hours=1)


# --- pure helpers ------------------------------------------------------------------------


def header_safe(value: str, limit: int = 900) -> str:
    """One line: CR, LF and other control characters become a space; bounded length."""
    return re.sub(r"\s{2,}", " ", _UNSAFE.sub(" ", value)).strip()[:limit]


def reply_subject(subject: str) -> str:
    """`Re: <subject>` without piling up `Re: AW: Re:` prefixes."""
    base = _REPLY_PREFIX.sub("", header_safe(subject))
    return f"Re: {base}" if base else "Re: your message"


def mailbox(name: str, address: str) -> Address | None:
    """A header address, or None when the address cannot be written safely in a 7-bit header."""
    address = header_safe(address)
    if not address.isascii() or "@" not in address or any(c in address for c in ' ,;<>"'):
        return None
    try:
        box = Address(display_name=header_safe(name, 200), addr_spec=address)
    except Exception:  # the email package raises several kinds for malformed addresses
        return None
    # the parser drops comments and repairs quoting: send only to exactly the address we hold
    return box if box.addr_spec.lower() == address.lower() else None


def conversation_id(token: str, created: datetime) -> bytes:
    """Outlook's 22-byte Thread-Index header block for a ticket: 6 bytes of FILETIME, 16 of id.

    The id is derived from the ticket token, so it is stable and unguessable like the token.
    """
    stamp = int((created - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    return (
        stamp.to_bytes(8, "big")[:6]
        + hashlib.sha256(b"thread-index\0" + token.encode()).digest()[:16]
    )


def thread_index(conversation: bytes, now: datetime) -> str:
    """A Thread-Index header value: the conversation block plus one 5-byte child block.

    The child (MS-OXOMSG 2.2.1.3) holds the time since the conversation began, so Outlook
    orders our mail after the message it answers; the last byte is random.
    """
    start = int.from_bytes(conversation[:6] + b"\0\0", "big")
    delta = max(0, int((now - _FILETIME_EPOCH).total_seconds() * 10_000_000) - start)
    code, value = (0, delta >> 18) if delta < 1 << 49 else (1, delta >> 23)
    child = ((code << 39) | ((value & 0x7FFFFFFF) << 8) | secrets.randbelow(256)).to_bytes(5, "big")
    return base64.b64encode(conversation + child).decode("ascii")


def trim_references(ids: Sequence[str]) -> list[str]:
    """RFC 5322 3.6.4: keep the thread's first id and the most recent ones."""
    ids = list(dict.fromkeys(i for i in ids if i))
    if len(ids) <= MAX_REFERENCES:
        return ids
    return [ids[0], *ids[-(MAX_REFERENCES - 1) :]]


def strip_footer(text: str) -> str:
    """Remove our notification footer from an agent's reply, and the quoted notification with it.

    Quoted (`> ` lines): the whole quote block holding the footer goes, with the attribution line
    above it ("On ... wrote:"). Unquoted (Outlook's "-----Original Message-----" or a From:/Sent:
    block): everything from that separator on. Otherwise only the footer lines. The customer has
    their own mail already, and a commands-only reply must not relay a bare quote.
    """
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if _MARK.match(_UNQUOTE.sub("", line).strip())]
    if not marks:
        return text
    for i in reversed(marks):
        lines = _cut_quote(lines, i) if _QUOTED.match(lines[i]) else _cut_unquoted(lines, i)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines).strip("\n")


def _cut_quote(lines: list[str], i: int) -> list[str]:
    start, end = i, i
    while start > 0 and _QUOTED.match(lines[start - 1]):
        start -= 1
    while end + 1 < len(lines) and _QUOTED.match(lines[end + 1]):
        end += 1
    return lines[: _attribution_start(lines, start)] + lines[end + 1 :]


def _attribution_start(lines: list[str], quote_start: int) -> int:
    """Where the "On <date>, <someone> wrote:" line(s) above a quote begin (or quote_start)."""
    j = quote_start - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].rstrip().endswith(":"):
        return quote_start
    # mail clients wrap a long attribution; look up to two lines further for its beginning
    for k in range(j, max(j - 3, -1), -1):
        if not lines[k].strip():
            break
        if _ATTRIBUTION_START.search(lines[k]):
            return k
    return j


def _cut_unquoted(lines: list[str], i: int) -> list[str]:
    # the nearest "-----Original Message-----" above the footer, else the nearest From:/Sent: block
    for j in range(i - 1, -1, -1):
        if _OUTLOOK_SEPARATOR.match(lines[j]):
            return lines[:j]
    for j in range(i - 1, -1, -1):
        if _OUTLOOK_FROM.match(lines[j]) and any(
            _OUTLOOK_NEXT.match(n) for n in lines[j + 1 : j + 4]
        ):
            return lines[:j]
    # an HTML reply turned into text loses the `>` of its quote, but keeps "On ... wrote:"
    for j in range(i - 1, -1, -1):
        if _ATTRIBUTION_START.search(lines[j]) and any(_WROTE.search(n) for n in lines[j : j + 3]):
            return lines[:j]
    start = i - 1 if i > 0 and lines[i - 1].strip() == "--" else i
    end = i
    while end + 1 < len(lines) and lines[end + 1].strip():
        end += 1
    return lines[:start] + lines[end + 1 :]


@dataclass(frozen=True, slots=True)
class Part:
    """An attachment to carry over: bytes and how to label them."""

    data: bytes | EmailMessage
    content_type: str
    filename: str


def attachments_of(raw: bytes) -> list[Part]:
    """The attachments of a stored message, to re-attach to a notification or relay."""
    found: list[Part] = []

    def visit(part: Any) -> None:
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                found.append(
                    Part(inner[0], ctype, header_safe(part.get_filename() or "message.eml", 200))
                )
            return
        if part.is_multipart():
            for sub in part.get_payload():
                visit(sub)
            return
        filename = part.get_filename()
        if ctype in ("text/plain", "text/html") and not filename and not part.is_attachment():
            return  # a body part: its text is in the mail we write
        data = part.get_payload(decode=True) or b""
        name = header_safe(filename or f"attachment-{len(found) + 1}", 200)
        found.append(Part(data, ctype, name))

    try:
        visit(message_from_bytes(raw, policy=policy.default))
    except Exception:  # a MIME structure the email package chokes on: notify without them
        log.warning("cannot take the attachments out of a message", exc_info=True)
    return found


def render(template: str, values: dict[str, object]) -> tuple[str | None, str]:
    """`string.Template` text; an optional first line `Subject: ...` gives the subject."""
    text = string.Template(template).safe_substitute({k: str(v) for k, v in values.items()})
    first, _, rest = text.partition("\n")
    if first.lower().startswith("subject:"):
        return first[8:].strip(), rest.lstrip("\n")
    return None, text


# --- building and queueing ---------------------------------------------------------------


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
    attachments: list[Part] = field(default_factory=list)
    verdict: str = ""


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
        self.tokens = correlate.Tokens(settings.smtp.addresses, tickets.plus_separator)
        self.tagger = correlate.Tagger(tickets.subject_tag)
        self.agents = classify.Policy(
            agent_addresses=frozenset(a.lower() for a in agents.addresses),
            agent_domains=frozenset(d.lower().lstrip("@") for d in agents.domains),
        )
        self.notify = [a for a in agents.notify if not self.tokens.is_ours(a)]
        custom = tickets.ack_template
        self.ack_template = Path(custom).read_text("utf-8") if custom else _template("ack")

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
        why_not = self._no_ack_reason(session, ticket, verdict, now)
        if why_not:
            log.info("ticket #%s: no acknowledgement: %s", ticket.number, why_not)
        else:
            self._queue(session, ticket, self._ack(ticket, message), now)
        self._notify_agents(session, ticket, message, parsed, "New ticket", now)

    def customer_reply(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        now: datetime,
    ) -> None:
        """Notify agents of a customer's reply."""
        self._notify_agents(session, ticket, message, parsed, "Customer reply", now)

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
        """Relay an agent's reply to the ticket's customer and participants, and nobody else."""
        to, cc = self._customer_recipients(session, ticket)
        if not to:  # the customer's address is unusable: the first participant takes its place
            to, cc = cc[:1], cc[1:]
        if not to:
            log.warning(
                "ticket #%s: no deliverable customer address; reply not relayed", ticket.number
            )
            return
        name = parsed.from_.name if parsed.from_ and parsed.from_.name else agent.partition("@")[0]
        from_name = self.settings.outbound.from_name
        if self.settings.agents.display_names:
            from_name = f"{name} via {from_name}"
        draft = Draft(
            kind="relay",
            author_kind="agent",
            to=to,
            cc=cc,
            subject=reply_subject(ticket.subject),
            body=text.rstrip() + "\n",
            from_name=from_name,
            in_reply_to=self._last_customer_id(session, ticket),
            auto_submitted=None,
            attachments=attachments_of(message.raw),
            verdict=f"relayed reply of {agent}",
        )
        self._queue(session, ticket, draft, now)

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
            from_name=self.settings.outbound.from_name,
            in_reply_to=parsed.message_id,
            auto_submitted="auto-replied",
            verdict=f"refused: {'; '.join(reasons)}",
        )
        self._queue(session, ticket, draft, now)

    def rule_notice(self, session: Session, ticket: Ticket, rule: str, now: datetime) -> None:
        """Tell the customer a rule changed their ticket (`[[rules]] notify = true`)."""
        if ticket.status in ("spam", "deleted"):
            return  # never write to the sender of spam
        to, cc = self._customer_recipients(session, ticket)
        if not to:
            return
        subject, body = render(_template("rule"), self._values(ticket) | {"rule": rule})
        draft = Draft(
            kind="rule",
            author_kind="system",
            to=to,
            cc=cc,
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.settings.outbound.from_name,
            in_reply_to=self._last_customer_id(session, ticket),
            auto_submitted="auto-generated",
            verdict=f"rule:{rule}",
        )
        self._queue(session, ticket, draft, now)

    def delivery_failed(
        self, session: Session, ticket: Ticket, row: Outbox, error: str, now: datetime
    ) -> None:
        """Tell the agents that a relayed reply never reached the customer."""
        if row.kind != "relay" or not self._notify_addresses():
            return  # only replies matter to agents; and never a notice about a notice
        values = self._values(ticket) | {
            "recipients": row.rcpt_tos,
            "error": header_safe(error, 500),
        }
        subject, body = render(_template("failed"), values)
        draft = Draft(
            kind="notice",
            author_kind="system",
            to=self._notify_addresses(),
            subject=subject or f"Undelivered reply: {ticket.subject}",
            body=body,
            from_name=self.settings.outbound.from_name,
            in_reply_to=None,
            auto_submitted="auto-generated",
            verdict=f"delivery failed: {error}"[:500],
        )
        self._queue(session, ticket, draft, now)

    def strip_footer(self, text: str) -> str:
        return strip_footer(text)

    # --- what to send --------------------------------------------------------------------

    def _no_ack_reason(
        self, session: Session, ticket: Ticket, verdict: Verdict, now: datetime
    ) -> str | None:
        customer = ticket.customer
        limit = self.settings.tickets.ack_max_per_sender_per_hour
        if not self.settings.tickets.acknowledge:
            return "acknowledgements are off"
        if verdict.kind != classify.MAIL or verdict.bulk:
            return f"not personal mail ({verdict.rule})"
        if self.tokens.is_ours(customer) or customer in self.notify:
            return f"{customer} is our own address"
        if verdict.claimed_agent or classify.is_agent_address(customer, self.agents):
            return f"{customer} is an agent address"
        if _NO_AUTO_REPLY.search(customer.partition("@")[0]) or mailbox("", customer) is None:
            return f"{customer} must not get automatic replies"
        if repo.count_outbox_to(session, "ack", customer, now - _HOUR) >= limit:
            return f"already {limit} acknowledgements to {customer} this hour"
        return None

    def _ack(self, ticket: Ticket, message: Message) -> Draft:
        subject, body = render(self.ack_template, self._values(ticket))
        to = mailbox(ticket.customer_name, ticket.customer)
        assert to is not None  # _no_ack_reason checked it
        return Draft(
            kind="ack",
            author_kind="system",
            to=[to],
            subject=subject or reply_subject(ticket.subject),
            body=body,
            from_name=self.settings.outbound.from_name,
            in_reply_to=message.message_id,
            auto_submitted="auto-replied",
            verdict="acknowledgement",
        )

    def _notify_agents(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        what: str,
        now: datetime,
    ) -> None:
        """The customer's mail with its attachments, from "<customer> via Support", to the agents."""
        # nobody is notified of their own mail: a notify list's naive autoresponder cannot loop
        to = [
            a for a in self._notify_addresses() if a.addr_spec.lower() != message.from_addr.lower()
        ]
        if not to:
            return
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
            from_name=f"{sender} via {self.settings.outbound.from_name}",
            in_reply_to=message.message_id,
            auto_submitted="auto-generated",
            attachments=attachments_of(message.raw),
            verdict=f"notification: {what.lower()}",
        )
        self._queue(session, ticket, draft, now)

    def _notify_addresses(self) -> list[Address]:
        return [a for a in (mailbox("", n) for n in self.notify) if a]

    def _customer_recipients(
        self, session: Session, ticket: Ticket
    ) -> tuple[list[Address], list[Address]]:
        """The customer (To) and the other participants (Cc): the only addresses a relay reaches."""
        to: list[Address] = []
        cc: list[Address] = []
        for address in repo.participants(session, ticket.number):
            if self.tokens.is_ours(address) or classify.is_agent_address(address, self.agents):
                continue  # never mail ourselves, and agents get notifications instead
            is_customer = address == ticket.customer
            box = mailbox(ticket.customer_name if is_customer else "", address)
            if box is not None:
                (to if is_customer else cc).append(box)
        return to, cc

    def _last_customer_id(self, session: Session, ticket: Ticket) -> str | None:
        for m in reversed(repo.ticket_messages(session, ticket.number)):
            if m.author_kind == "customer" and m.message_id:
                return m.message_id
        return None

    def _values(self, ticket: Ticket) -> dict[str, object]:
        return {
            "number": ticket.number,
            "tag": self.tagger.format(ticket.number),
            "subject": header_safe(ticket.subject) or "(no subject)",
            "status": ticket.status,
            "customer": ticket.customer,
            "name": header_safe(ticket.customer_name) or ticket.customer,
            "reply_to": self.tokens.address(ticket.token),
            "from_name": self.settings.outbound.from_name,
        }

    # --- headers, storage, outbox -------------------------------------------------------

    def _queue(
        self, session: Session, ticket: Ticket, draft: Draft, now: datetime
    ) -> Outbox | None:
        message_id = f"{secrets.token_hex(16)}@{self.domain}"
        known = repo.message_ids_of_ticket(session, ticket.number, limit=1000)
        built = self._render(ticket, draft, message_id, known, now)
        if built is None:
            return None
        msg, raw = built
        recipients = [a.addr_spec.lower() for a in (*draft.to, *draft.cc)]
        stored = self._store(session, ticket, draft, msg, raw, message_id, now)
        row = repo.add_outbox(
            session,
            Outbox(
                ticket_number=ticket.number,
                message_pk=stored.id,
                kind=draft.kind,
                mail_from=self.from_address,
                rcpt_tos=",".join(recipients),
                rcpt_key=recipients[0][:320],
                raw=raw,
                state="queued",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            ),
        )
        log.info("ticket #%s: queued %s to %s", ticket.number, draft.kind, ", ".join(recipients))
        return row

    def _render(
        self, ticket: Ticket, draft: Draft, message_id: str, known: Sequence[str], now: datetime
    ) -> tuple[EmailMessage, bytes] | None:
        """Build and serialise; a part the email package cannot write costs the attachments,
        and at worst this one mail, never the customer's message (ingest would quarantine it)."""
        for attempt in range(2):
            try:
                msg = self.build(ticket, draft, message_id, known, now)
                return msg, msg.as_bytes(policy=policy.SMTP)
            except Exception:
                log.exception("ticket #%s: cannot write the %s mail", ticket.number, draft.kind)
                if attempt or not draft.attachments:
                    return None
                note = (
                    f"(The attachments could not be copied; they are on ticket #{ticket.number}.)"
                )
                draft.attachments, draft.body = [], f"{draft.body.rstrip()}\n\n{note}\n"
        return None

    def build(
        self, ticket: Ticket, draft: Draft, message_id: str, known: Sequence[str], now: datetime
    ) -> EmailMessage:
        """The mail with every header of SPEC section 2; `known` are the ticket's Message-IDs.

        Our own Message-ID ends our References, so a reply still threads when a relay on the
        way rewrote the Message-ID header.
        """
        if ticket.thread_index is None:
            # set once, so threading by Thread-Index finds the ticket whatever client answers
            ticket.thread_index = conversation_id(ticket.token, ticket.created_at).hex()
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"] = Address(header_safe(draft.from_name, 200), addr_spec=self.from_address)
        msg["To"] = draft.to
        if draft.cc:
            msg["Cc"] = draft.cc
        msg["Reply-To"] = Address(
            header_safe(self.settings.outbound.from_name, 200),
            addr_spec=self.tokens.address(ticket.token),
        )
        msg["Subject"] = header_safe(self.tagger.tagged(header_safe(draft.subject), ticket.number))
        msg["Date"] = format_datetime(now.astimezone(UTC))
        msg["Message-ID"] = f"<{message_id}>"
        references = trim_references([*known, message_id])
        if draft.in_reply_to:
            msg["In-Reply-To"] = f"<{draft.in_reply_to}>"
        msg["References"] = " ".join(f"<{r}>" for r in references)
        msg["Thread-Index"] = thread_index(_conversation(ticket), now)
        msg["Thread-Topic"] = header_safe(ticket.subject) or "(no subject)"
        if draft.auto_submitted:
            msg["Auto-Submitted"] = draft.auto_submitted
            # Exchange and friends: do not answer this with out-of-office replies
            msg["X-Auto-Response-Suppress"] = "All"
        msg["X-Loop"] = header_safe(self.identity)
        msg["X-Mailbridge-Ticket"] = str(ticket.number)
        # a lone surrogate (undecodable bytes in the source mail) cannot be encoded: replace it
        msg.set_content(draft.body.encode("utf-8", "replace").decode("utf-8"))
        for part in draft.attachments:
            _attach(msg, part)
        return msg

    def _store(
        self,
        session: Session,
        ticket: Ticket,
        draft: Draft,
        msg: EmailMessage,
        raw: bytes,
        message_id: str,
        now: datetime,
    ) -> Message:
        stored = repo.add_message(
            session,
            Message(
                ticket_number=ticket.number,
                direction="outbound",
                author_kind=draft.author_kind,
                message_id=message_id,
                dedup_key=dedup_key(message_id, content_hash(raw)),
                content_hash=content_hash(raw),
                from_addr=self.from_address,
                from_name=header_safe(draft.from_name, 200),
                to_addrs=", ".join(a.addr_spec for a in draft.to),
                cc_addrs=", ".join(a.addr_spec for a in draft.cc),
                subject=str(msg["Subject"]),
                date=now,
                stored_at=now,
                source=f"outbound:{draft.kind}",
                verdict=draft.verdict[:1000],
                size=len(raw),
                body_text=draft.body,
                raw=raw,
            ),
            [
                Attachment(filename=p.filename, content_type=p.content_type, size=_size(p))
                for p in draft.attachments
            ],
        )
        repo.add_thread_keys(session, ticket.number, [message_id])
        ticket.updated_at = now
        return stored


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.txt").read_text("utf-8")


def _conversation(ticket: Ticket) -> bytes:
    try:
        block = bytes.fromhex(ticket.thread_index or "")
    except ValueError:
        block = b""
    return block if len(block) == 22 else conversation_id(ticket.token, ticket.created_at)


def _attach(msg: EmailMessage, part: Part) -> None:
    if isinstance(part.data, EmailMessage) or not isinstance(part.data, bytes):
        msg.add_attachment(part.data, filename=part.filename)
        return
    maintype, _, subtype = part.content_type.partition("/")
    msg.add_attachment(
        part.data,
        maintype=maintype or "application",
        subtype=subtype or "octet-stream",
        filename=part.filename,
    )


def _size(part: Part) -> int:
    return len(part.data) if isinstance(part.data, bytes) else len(part.data.as_bytes())
