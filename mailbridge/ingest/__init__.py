"""THE funnel: every source (SMTP, LMTP, IMAP, `ingest`, quarantine retry) hands mail to `accept`.

Per message: parse (outside the transaction), then in one savepoint of the unit of work: dedup,
classify, thread, apply the lifecycle, store raw + derived rows, queue outbound mail. Any failure
rolls the savepoint back and parks the raw bytes in quarantine with the reason, so nothing is lost
and nothing half-written remains. Only a failure to store the bytes at all escapes, as
StorageUnavailable (the SMTP source turns it into 451).
"""

from __future__ import annotations

import base64
import email.policy
import json
import logging
import re
import secrets
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, ClassVar, cast

from mailbridge import (
    agent_commands,
    assignment,
    correlate,
    lifecycle,
    ownership,
    routing,
)
from mailbridge import rules as classify
from mailbridge.clock import Clock, system_clock
from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.errors import DuplicateKey, IllegalTransition, StorageUnavailable
from mailbridge.fingerprint import content_hash, dedup_key
from mailbridge.ingest.pool import InlineParser, Parser, ParseResult
from mailbridge.lifecycle import Kind, Note, Status
from mailbridge.parse import CLASSIFY_HEADERS, Address, ParsedMessage, decode_header_text
from mailbridge.storage import repo
from mailbridge.storage.models import Attachment, Message, Quarantine, Ticket

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.outbound.decide import Outbound
    from mailbridge.storage import Batch, Session, Store

    _Handler = Callable[
        ["Ingestor", Session, "Prepared", classify.Verdict, "Decision", datetime], Outcome
    ]

log = logging.getLogger("mailbridge.ingest")


def new_token() -> str:
    """80 random bits in lowercase base32: unguessable, and safe in a case-folding local part."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


@dataclass(slots=True)
class Prepared:
    raw: bytes
    envelope: Envelope
    source: Source
    parsed: ParsedMessage | None
    parse_error: str | None
    dedup_key: str
    content_hash: str


@dataclass(slots=True)
class _Seen:
    """Dedup keys already stored (key -> ticket, 0 when purged) or held in quarantine, for one batch:
    fetched in one query per batch, then kept current as the batch goes."""

    known: dict[str, int]
    held: dict[str, int]

    def note(self, key: str, outcome: Outcome) -> None:
        if outcome.outcome in ("created", "appended") and outcome.ticket:
            self.known[key] = outcome.ticket
        elif outcome.quarantine and outcome.outcome != "duplicate":
            self.held[key] = outcome.quarantine


@dataclass(slots=True)
class Decision:
    """What threading found: the ticket, and the rule that found it."""

    ticket: Ticket | None
    rule: str


class Ingestor:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock = system_clock,
        outbound: Outbound | None = None,
        on_outcome: Callable[[Outcome, Source, float], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.outbound = outbound
        self.on_outcome = on_outcome
        # told the strategy of each automatic assignment (the metrics count them)
        self.on_assign: Callable[[str], None] | None = None
        # parses mail handed in without a ParseResult; the daemon puts its worker pool here
        self.parser: Parser = InlineParser()
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)build what ingest derives from the config; called again on reload."""
        self.settings = settings
        agents = settings.agents
        self.tokens = settings.addressing.tokens
        self.router = routing.Router(
            settings.queue_list, settings.filters, settings.tickets.plus_separator
        )
        extra = sorted(self.router.header_names - CLASSIFY_HEADERS)
        self._extra_headers = (
            re.compile(
                b"^(?:" + b"|".join(re.escape(n.encode()) for n in extra) + b"):", re.I | re.M
            )
            if extra
            else None
        )
        self.tagger = settings.addressing.tagger
        self.policy = classify.Policy(
            identity=settings.outbound.identity or "mailbridge",
            agent_addresses=frozenset(a.lower() for a in agents.addresses),
            agent_domains=frozenset(d.lower().lstrip("@") for d in agents.domains),
            trusted_authserv_ids=frozenset(a.lower() for a in agents.trusted_authserv_ids),
            blocked=frozenset(b.lower() for b in settings.tickets.blocked_senders),
        )

    # --- entry points -------------------------------------------------------------------

    def accept(
        self, raw: bytes, envelope: Envelope, source: Source, parsed: ParseResult | None = None
    ) -> Outcome:
        return self.accept_many([(raw, envelope, source)], [parsed])[0]

    def accept_many(
        self,
        items: Sequence[tuple[bytes, Envelope, Source]],
        parsed: Sequence[ParseResult | None] | None = None,
    ) -> list[Outcome]:
        """Ingest several messages in one transaction (group commit); each is acknowledged by the caller
        only after this returns, i.e. after the commit that holds it. `parsed` holds what a source
        already parsed (None where it did not); `self.parser` parses the rest."""
        results = self._parse([raw for raw, _, _ in items], parsed)
        prepared = [
            self.prepare(raw, env, src, result)
            for (raw, env, src), result in zip(items, results, strict=True)
        ]
        started = self.clock()
        try:
            outcomes = self._commit_all(prepared)
        except Exception:
            try:
                # something failed: redo the batch one message at a time
                outcomes = self._commit_each(prepared)
            except StorageUnavailable:
                if len(prepared) == 1:
                    raise
                # the transaction itself cannot commit: give every message its own chance
                return [
                    self.accept(p.raw, p.envelope, p.source, ParseResult(p.parsed, p.parse_error))
                    for p in prepared
                ]
        elapsed = (self.clock() - started).total_seconds() / max(len(prepared), 1)
        for outcome, p in zip(outcomes, prepared, strict=True):
            log.log(
                # the listener's own line names the outcome and ticket: one line per message
                logging.DEBUG if p.source.kind in ("smtp", "lmtp") else logging.INFO,
                "%s %s ticket=%s reason=%s",
                p.source.kind,
                outcome.outcome,
                outcome.ticket,
                outcome.reason,
            )
            if self.on_outcome:
                self.on_outcome(outcome, p.source, elapsed)
        return outcomes

    def quarantine_raw(
        self, raw: bytes, envelope: Envelope, source: Source, reason: str
    ) -> Outcome:
        """Park mail that must not go through the pipeline (e.g. oversize from IMAP), raw, with the reason."""
        chash = content_hash(raw)
        p = Prepared(raw, envelope, source, None, reason, dedup_key(None, chash), chash)
        with self.store.unit() as session:
            _, held = repo.known_dedup_keys(session, [p.dedup_key])
            if p.dedup_key in held:
                return Outcome(
                    "duplicate",
                    None,
                    f"duplicate: already held in quarantine #{held[p.dedup_key]}",
                    quarantine=held[p.dedup_key],
                    source=source.name,
                )
            outcome = self._quarantine(session, p, reason, "")
        log.info("%s quarantined reason=%s", source.kind, reason)
        if self.on_outcome:
            self.on_outcome(outcome, source, 0.0)
        return replace(outcome, source=source.name)

    def _commit_all(self, prepared: list[Prepared]) -> list[Outcome]:
        """The fast path: the whole batch in one transaction, without savepoints."""
        with self.store.batch() as batch:
            seen = _Seen(*repo.known_dedup_keys(batch.session, [p.dedup_key for p in prepared]))
            outcomes = []
            for p in prepared:
                outcome = self._decide(batch.session, p, seen)
                seen.note(p.dedup_key, outcome)
                outcomes.append(replace(outcome, source=p.source.name or p.source.kind))
            return outcomes

    def _commit_each(self, prepared: list[Prepared]) -> list[Outcome]:
        """Each message in a savepoint of its own: a failing one is quarantined, the rest commit."""
        with self.store.batch() as batch:
            seen = _Seen(*repo.known_dedup_keys(batch.session, [p.dedup_key for p in prepared]))
            return [self._one(batch, p, seen) for p in prepared]

    def explain(self, raw: bytes, envelope: Envelope, source: Source) -> Outcome:
        """Decide like `accept` and say why, but write nothing (`ingest --dry-run`)."""
        p = self.prepare(raw, envelope, source)
        with self.store.trial() as batch:
            return self._one(batch, p, _Seen(*repo.known_dedup_keys(batch.session, [p.dedup_key])))

    def _parse(
        self, raws: list[bytes], given: Sequence[ParseResult | None] | None
    ) -> list[ParseResult]:
        results: list[ParseResult | None] = list(given) if given is not None else [None] * len(raws)
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            parsed = self.parser.parse_many([raws[i] for i in missing])
            for i, result in zip(missing, parsed, strict=True):
                results[i] = result
        return cast(list[ParseResult], results)  # every None was filled just above

    def prepare(
        self, raw: bytes, envelope: Envelope, source: Source, result: ParseResult | None = None
    ) -> Prepared:
        if result is None:
            result = self.parser.parse_many([raw])[0]
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

    # --- one message --------------------------------------------------------------------

    def _one(self, batch: Batch, p: Prepared, seen: _Seen) -> Outcome:
        """One message in a savepoint of the batch; if it fails, it is quarantined instead."""
        session = batch.session
        try:
            with batch.savepoint():
                outcome = self._decide(session, p, seen)
        except DuplicateKey:
            # another node (or an earlier message of this batch) stored the same mail first
            number = repo.seen_dedup_key(session, p.dedup_key)
            if number is None:
                outcome = self._quarantine(session, p, "storage conflict", traceback.format_exc())
            else:
                outcome = Outcome("duplicate", number or None, "duplicate: stored concurrently")
        except Exception as exc:
            log.exception("ingest failed; quarantining the message")
            outcome = self._quarantine(
                session, p, f"error: {exc.__class__.__name__}: {exc}"[:500], traceback.format_exc()
            )
        return replace(outcome, source=p.source.name or p.source.kind)

    def _decide(self, session: Session, p: Prepared, seen: _Seen) -> Outcome:
        number = seen.known.get(p.dedup_key)
        if number is not None:
            where = f"on ticket #{number}" if number else "on a purged ticket"
            return Outcome(
                "duplicate", number or None, f"duplicate: same Message-ID and content {where}"
            )
        held = seen.held.get(p.dedup_key)
        if held is not None and p.source.kind != "retry":
            return Outcome(
                "duplicate", None, f"duplicate: already held in quarantine #{held}", quarantine=held
            )
        if p.parsed is None:
            return self._quarantine(session, p, p.parse_error or "unparseable", "")
        msg = p.parsed
        if p.source.agent_authority and msg.message_id:
            # the agent's reply may already have reached us by SMTP: same mail, other bytes
            known = repo.tickets_for_message_ids(session, [msg.message_id])
            if known:
                number = known[msg.message_id]
                return Outcome(
                    "duplicate", number, f"duplicate: Message-ID already on ticket #{number}"
                )
        now = self.clock()
        verdict = classify.classify(msg, p.envelope, p.source, self.policy)
        delivered = (*msg.headers.get("delivered-to", ()), *msg.headers.get("x-original-to", ()))
        recipients = [*p.envelope.rcpt_tos, *(a.addr for a in (*msg.to, *msg.cc)), *delivered]
        keys = correlate.thread_keys(msg, recipients, self.tokens, self.tagger)
        found = self._thread(session, keys, msg, verdict)

        return self._ACTIONS[verdict.action](self, session, p, verdict, found, now)

    def _ticket(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        if verdict.agent:
            return self._agent_mail(session, p, verdict, found, now)
        return self._customer_mail(session, p, verdict, found, now)

    def _spam(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        if found.ticket is not None:
            # a blocked sender's reply does not make the customer's ticket spam
            return self._not_a_ticket(session, p, verdict, found, now)
        ticket, message, routed = self._create(
            session, p, verdict, verdict.with_hits(f"new ticket: {verdict.rule}"), now, None
        )
        if ticket.status != Status.SPAM:
            self._transition(
                session,
                ticket,
                lifecycle.Event(Kind.SPAM, f"rule:{verdict.rule.split(':')[0]}"),
                now,
                message.id,
            )
        return Outcome("created", ticket.number, f"{verdict.rule} -> spam; {routed}", message.id)

    # --- threading ----------------------------------------------------------------------

    def _thread(
        self,
        session: Session,
        keys: correlate.ThreadKeys,
        msg: ParsedMessage,
        verdict: classify.Verdict,
    ) -> Decision:
        if keys.message_ids:
            known = repo.tickets_for_message_ids(session, keys.message_ids)
            for mid in keys.message_ids:
                if mid in known:
                    header = "in-reply-to" if mid in msg.in_reply_to else "references"
                    return self._found(session, known[mid], f"{header} <{mid}>")
        if keys.thread_index:
            number = repo.ticket_for_thread_index(session, keys.thread_index)
            if number:
                return self._found(session, number, f"thread-index {keys.thread_index[:12]}…")
        for token in keys.tokens:
            ticket = repo.ticket_by_token(session, token)
            if ticket:
                return self._found(
                    session, ticket.number, f"token in recipient address (ticket #{ticket.number})"
                )
        if keys.tag_number is not None:
            ticket = repo.get_ticket(session, keys.tag_number)
            sender = msg.from_.addr.lower() if msg.from_ else ""
            if ticket is not None:
                tag = self.tagger.format(keys.tag_number)
                if sender and sender == ticket.customer:
                    return self._found(
                        session, ticket.number, f"subject-tag {tag}, sender is the customer"
                    )
                if sender and repo.is_participant(session, ticket.number, sender):
                    return self._found(
                        session, ticket.number, f"subject-tag {tag}, sender is a participant"
                    )
                if verdict.agent:
                    return self._found(
                        session, ticket.number, f"subject-tag {tag}, sender is an agent"
                    )
                return Decision(
                    None,
                    f"subject-tag {tag} ignored: {sender or 'sender'} is not on ticket #{ticket.number}",
                )
        return Decision(None, "no thread match")

    def _found(self, session: Session, number: int, rule: str) -> Decision:
        return Decision(repo.get_ticket(session, number, lock=True), rule)

    # --- outcomes -----------------------------------------------------------------------

    def _not_a_ticket(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        ticket = found.ticket
        if ticket is None:
            detail = verdict.with_hits(f"not threaded ({found.rule})", verdict.rule)
            return self._quarantine(session, p, verdict.rule, detail, kind="ignored")
        message = self._store_message(
            session,
            p,
            ticket,
            "inbound",
            "system",
            verdict.with_hits(f"{verdict.rule}; {found.rule}"),
            now,
        )
        record = lifecycle.Record(
            now,
            verdict.kind,
            self._actor(p),
            ticket.status,
            ticket.status,
            verdict.with_hits(verdict.rule),
        )
        repo.add_events(session, ticket.number, [record], message.id)
        ticket.updated_at = now
        return Outcome(
            "appended", ticket.number, f"{verdict.rule}; {found.rule}; status unchanged", message.id
        )

    # what ingest does for each rule action: the verdict is data, walked here
    _ACTIONS: ClassVar[Mapping[classify.Action, _Handler]] = {
        classify.Action.TICKET: _ticket,
        classify.Action.NOT_A_TICKET: _not_a_ticket,
        classify.Action.SPAM: _spam,
    }

    def _customer_mail(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        ticket, actor = found.ticket, self._actor(p)
        if ticket is not None:
            kind = Kind.CONFIRM if self._confirms(session, p, ticket) else Kind.CUSTOMER_MAIL
            # the table accepts customer mail in every status: this cannot raise
            transition = lifecycle.apply(
                repo.ticket_state(ticket), lifecycle.Event(kind, actor), now
            )
            if not transition.new_ticket:
                why = verdict.with_hits(f"{found.rule}; {verdict.rule}")
                message = self._store_message(session, p, ticket, "inbound", "customer", why, now)
                repo.save_transition(session, ticket, transition, now, message.id)
                ticket.last_activity_at = now
                self._note_claimed_agent(session, ticket, verdict, actor, now, message.id)
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
            sender = self._sender(p)
            since = now - timedelta(hours=1)
            if sender and repo.count_new_tickets_from(session, sender, since, limit) >= limit:
                return self._quarantine(
                    session, p, "flood", f"more than {limit} new tickets from {sender} in an hour"
                )
        ticket, message, routed = self._create(
            session, p, verdict, verdict.with_hits(rule), now, follow
        )
        self._note_claimed_agent(session, ticket, verdict, actor, now, message.id)
        if self.outbound and p.source.live and ticket.status != Status.SPAM:
            self.outbound.new_ticket(session, ticket, message, p.parsed, verdict, now)
        return Outcome("created", ticket.number, f"{rule}; {routed}", message.id)

    def _confirms(self, session: Session, p: Prepared, ticket: Ticket) -> bool:
        """A close word from the ticket's customer or a participant on a resolved ticket (SPEC 8)."""
        if ticket.status != Status.RESOLVED or p.parsed is None:
            return False
        if not lifecycle.confirms(p.parsed.body_text, self.settings.tickets.customer_close_words):
            return False
        sender = self._sender(p)
        return sender == ticket.customer or repo.is_participant(session, ticket.number, sender)

    def _agent_mail(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        msg = p.parsed
        assert msg is not None and verdict.agent
        agent = verdict.agent
        ticket = found.ticket
        if ticket is None:
            # an agent writing afresh: the ticket's customer is whom they wrote to, if anyone
            ticket, message, routed = self._create(
                session,
                p,
                verdict,
                verdict.with_hits(f"agent mail, {found.rule}"),
                now,
                None,
                direction="outbound",
                author_kind="agent",
            )
            return Outcome(
                "created", ticket.number, f"{verdict.rule}; {found.rule}; {routed}", message.id
            )

        parsed_cmds = agent_commands.split_commands(msg.body_text)
        if self.outbound:
            parsed_cmds = agent_commands.Parsed(
                parsed_cmds.commands,
                self.outbound.strip_footer(parsed_cmds.text),
                parsed_cmds.unknown,
            )
        is_note = any(c.name == "note" for c in parsed_cmds.commands)
        has_text = bool(parsed_cmds.text.strip())
        recipients = {
            r.lower() for r in (*p.envelope.rcpt_tos, *(a.addr for a in (*msg.to, *msg.cc)))
        }
        relay = (
            has_text
            and not is_note
            and ticket.customer not in recipients
            and not p.source.agent_authority
        )
        direction = "inbound" if relay or is_note else "outbound"
        why = verdict.with_hits(f"{found.rule}; {verdict.rule}")
        message = self._store_message(session, p, ticket, direction, "agent", why, now)
        if ticket.customer in recipients and not is_note:
            # written to the customer directly: whoever else it went to is in the conversation
            self._add_participants(session, p, ticket, now, message.id)
        actor = agent
        refusals: list[str] = [f"unknown command {u}" for u in parsed_cmds.unknown]
        if has_text and not is_note:
            self._apply_or_refuse(
                session, ticket, lifecycle.Event(Kind.AGENT_REPLY, actor), now, message.id, refusals
            )
            self._owner_on_reply(session, ticket, agent, now, message.id)
        for cmd in parsed_cmds.commands:
            if cmd.name in ownership.COMMANDS:
                try:
                    ownership.command(
                        session,
                        self.settings,
                        ticket,
                        cmd.name,
                        cmd.argument,
                        agent,
                        now,
                        message.id,
                    )
                except ownership.Refused as exc:
                    refusals.append(str(exc))
                continue
            event = self._command_event(cmd, actor, now, refusals)
            if event is not None:
                self._apply_or_refuse(session, ticket, event, now, message.id, refusals)
        ticket.last_activity_at = now
        if self.outbound:
            if relay and ticket.status not in (Status.SPAM, Status.DELETED):
                self.outbound.relay(session, ticket, message, msg, parsed_cmds.text, agent, now)
            if refusals:
                self.outbound.refused(session, ticket, agent, refusals, msg, now)
        summary = (
            f"{found.rule}; {verdict.rule}; {'relayed' if relay else 'recorded'} -> {ticket.status}"
        )
        if refusals:
            summary += "; refused: " + "; ".join(refusals)
        return Outcome("appended", ticket.number, summary, message.id)

    def _command_event(
        self, cmd: agent_commands.Command, actor: str, now: datetime, refusals: list[str]
    ) -> lifecycle.Event | None:
        kinds = {
            "resolve": Kind.RESOLVE,
            "close": Kind.CLOSE,
            "spam": Kind.SPAM,
            "delete": Kind.DELETE,
        }
        if cmd.name in kinds:
            return lifecycle.Event(kinds[cmd.name], actor)
        if cmd.name == "postpone":
            try:
                return lifecycle.Event(
                    Kind.POSTPONE, actor, until=agent_commands.postpone_until(cmd.argument, now)
                )
            except ValueError as exc:
                refusals.append(f"#postpone: {exc}")
        return None

    def _apply_or_refuse(
        self,
        session: Session,
        ticket: Ticket,
        event: lifecycle.Event,
        now: datetime,
        message_pk: int | None,
        refusals: list[str],
    ) -> None:
        try:
            self._transition(session, ticket, event, now, message_pk)
        except IllegalTransition as exc:
            refusals.append(
                f"#{event.kind}: {exc}" if event.kind is not Kind.AGENT_REPLY else str(exc)
            )

    def _owner_on_reply(
        self, session: Session, ticket: Ticket, agent: str, now: datetime, message_pk: int
    ) -> None:
        """`assign_on_reply`: the first agent to answer an unowned ticket becomes its owner."""
        if ticket.owner is not None or not self.settings.queue(ticket.queue).assign_on_reply:
            return
        members = self.settings.queue(ticket.queue).members
        if members and agent not in members:
            return
        ticket.owner = agent
        record = lifecycle.Record(
            now, Note.ASSIGN, agent, ticket.status, ticket.status, f"assign_on_reply -> {agent}"
        )
        repo.add_events(session, ticket.number, [record], message_pk)

    # --- routing and assignment ---------------------------------------------------------

    def _route(self, p: Prepared) -> routing.Route:
        msg = p.parsed
        assert msg is not None
        headers: Mapping[str, Sequence[str]] = msg.headers
        if self._extra_headers is not None and self._extra_headers.search(
            block := _header_block(p.raw)
        ):
            # a filter on a header the parser does not keep, and the mail has it: read the
            # header block once more
            wanted = self.router.header_names - CLASSIFY_HEADERS
            found = _HEADERS.parsebytes(block)
            extra = {n: tuple(decode_header_text(v) for v in found.get_all(n, ())) for n in wanted}
            headers = {**headers, **extra}
        imap = p.source.name if p.source.kind in ("imap", "imap-sent") else None
        return self.router.route(
            routing.Facts(
                sender=self._sender(p),
                envelope_to=tuple(r.lower() for r in p.envelope.rcpt_tos),
                delivered_to=tuple(
                    v.strip().strip("<>").lower()
                    for name in ("delivered-to", "x-original-to")
                    for v in headers.get(name, ())
                ),
                to=tuple(a.addr.lower() for a in msg.to),
                cc=tuple(a.addr.lower() for a in msg.cc),
                subject=msg.subject,
                body=msg.body_text if self.router.needs_body else "",
                headers=headers,
                imap_account=imap,
            )
        )

    def _assign(
        self, session: Session, route: routing.Route, customer: str, now: datetime
    ) -> assignment.Assignment:
        queue = route.queue
        return assignment.choose(
            self.settings.queue(queue).assign,
            self.settings.queue_members(queue),
            take_turn=lambda: repo.take_turn(session, queue),
            open_counts=lambda: repo.open_counts(session, self.settings.queue_members(queue)),
            last_owner=lambda: repo.last_owner(
                session, customer, queue, now - assignment.STICKY_WINDOW
            ),
            filter_owner=route.owner,
            filter_name=route.owner_filter,
        )

    # --- building blocks ----------------------------------------------------------------

    def _create(
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
        author = _author(msg)
        customer, name = self._sender(p), (author.name if author else "")
        if author_kind == "agent":
            others = [
                a
                for a in (*msg.to, *msg.cc)
                if not self.tokens.is_ours(a.addr)
                and not classify.is_agent_address(a.addr, self.policy)
            ]
            if others:
                customer, name = others[0].addr.lower(), others[0].name
        route = self._route(p)
        spam = route.spam is not None or verdict.action is classify.Action.SPAM
        chosen = None if spam else self._assign(session, route, customer, now)
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
        message = self._store_message(
            session, p, ticket, direction, author_kind, rule, now, participants=False
        )
        repo.add_events(
            session,
            ticket.number,
            lifecycle.create(self._actor(p), now, f"{rule}; {routed}").records,
            message.id,
        )
        if route.tags:
            repo.add_tags(session, ticket.number, route.tags)
        if chosen is not None and chosen.owner is not None:
            record = lifecycle.Record(
                now, Note.ASSIGN, f"rule:{chosen.strategy}", Status.NEW, Status.NEW, chosen.detail
            )
            repo.add_events(session, ticket.number, [record], message.id)
            if self.on_assign is not None:
                self.on_assign(chosen.strategy)
        if route.spam is not None:
            self._transition(
                session, ticket, lifecycle.Event(Kind.SPAM, f"rule:{route.spam}"), now, message.id
            )
        if author_kind == "agent" and customer != self._sender(p):
            self._transition(
                session, ticket, lifecycle.Event(Kind.AGENT_REPLY, self._actor(p)), now, message.id
            )
        # whoever opens a ticket is its customer, or an agent writing to one
        self._add_participants(session, p, ticket, now, message.id)
        return ticket, message, routed

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
        sender = self._sender(p)
        return bool(sender) and (
            sender == ticket.customer or repo.is_participant(session, ticket.number, sender)
        )

    def _add_participants(
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
                now, Note.PARTICIPANTS_LIMIT, self._actor(p), ticket.status, ticket.status, detail
            )
            repo.add_events(session, ticket.number, [record], message_pk)

    def _store_message(
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
                from_addr=(author.addr if (author := _author(msg)) else "")[:320],
                from_name=author.name if author else "",
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
            self._add_participants(session, p, ticket, now, message.id)
        ticket.updated_at = now
        return message

    def _transition(
        self,
        session: Session,
        ticket: Ticket,
        event: lifecycle.Event,
        now: datetime,
        message_pk: int | None,
    ) -> None:
        transition = lifecycle.apply(repo.ticket_state(ticket), event, now)
        repo.save_transition(session, ticket, transition, now, message_pk)

    def _note_claimed_agent(
        self,
        session: Session,
        ticket: Ticket,
        verdict: classify.Verdict,
        actor: str,
        now: datetime,
        message_pk: int,
    ) -> None:
        if verdict.claimed_agent:
            log.warning(
                "mail from %s claims an agent address without authentication: treated as customer mail",
                actor,
            )
            record = lifecycle.Record(
                now,
                Note.UNAUTHENTICATED_AGENT,
                actor,
                ticket.status,
                ticket.status,
                "agent From without authentication: treated as customer mail",
            )
            repo.add_events(session, ticket.number, [record], message_pk)

    def _quarantine(
        self, session: Session, p: Prepared, reason: str, detail: str, kind: str = "quarantined"
    ) -> Outcome:
        msg = p.parsed
        entry = repo.add_quarantine(
            session,
            Quarantine(
                kind=kind,
                state="held",
                reason=reason[:1000],
                detail=detail,
                source=f"{p.source.kind}:{p.source.name}"[:200],
                envelope=json.dumps(
                    {
                        "mail_from": p.envelope.mail_from,
                        "rcpt_tos": list(p.envelope.rcpt_tos),
                        "auth_user": p.envelope.auth_user,
                        "trusted_peer": p.envelope.trusted_peer,
                    }
                ),
                sender=self._sender(p)[:320],
                message_id=msg.message_id if msg else None,
                dedup_key=p.dedup_key,
                created_at=self.clock(),
                size=len(p.raw),
                raw=p.raw,
            ),
        )
        outcome = "ignored" if kind == "ignored" else "quarantined"
        return Outcome(outcome, None, reason, quarantine=entry.id)

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

    @staticmethod
    def _sender(p: Prepared) -> str:
        author = _author(p.parsed)
        if author is not None:
            return author.addr.lower()
        return (p.envelope.mail_from or "").lower()

    def _actor(self, p: Prepared) -> str:
        return self._sender(p) or "unknown"


# compat32 hands back the raw values, which decode_header_text decodes like the parser does;
# the default policy's header objects cost several times more
_HEADERS = BytesHeaderParser(policy=email.policy.compat32)


def _header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw


def _author(msg: ParsedMessage | None) -> Address | None:
    """Who wrote the mail: From, else Sender, else Reply-To (some clients and forwarders omit From)."""
    if msg is None:
        return None
    for candidate in (msg.from_, msg.sender, *msg.reply_to):
        if candidate is not None and candidate.addr:
            return candidate
    return None
