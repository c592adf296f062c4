"""THE funnel: every source (SMTP, LMTP, IMAP, `ingest`, quarantine retry) hands mail to `accept`.

Per message: parse (outside the transaction), then in one savepoint of the unit of work: dedup,
classify, thread, apply the lifecycle, store raw + derived rows, queue outbound mail. Any failure
rolls the savepoint back and parks the raw bytes in quarantine with the reason, so nothing is lost
and nothing half-written remains. Only a failure to store the bytes at all escapes, as
StorageUnavailable (the SMTP source turns it into 451).

The steps, by module: `batch` (group commit, the failure ladder, quarantine), `mail` (one mail and
its author), `match` (SPEC 2 threading), `customer` and `agent` (what their mail does), `tickets`
(the rows written) and `route` (queues and owners). This module classifies each mail and walks
the verdict's action (`rules.Action`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, cast

from mailbridge import correlate, lifecycle
from mailbridge import rules as classify
from mailbridge.clock import Clock, system_clock
from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.errors import StorageUnavailable
from mailbridge.ingest import batch
from mailbridge.ingest.agent import AgentMail
from mailbridge.ingest.customer import CustomerMail
from mailbridge.ingest.mail import Prepared, actor, prepare, unparsed
from mailbridge.ingest.match import Decision, Stored, match
from mailbridge.ingest.route import Routes
from mailbridge.ingest.tickets import Tickets
from mailbridge.lifecycle import Kind, Status
from mailbridge.parse_pool import InlineParser, Parser, ParseResult
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.outbound.decide import Outbound
    from mailbridge.storage import Session, Store

    _Handler = Callable[
        ["Ingestor", Session, Prepared, classify.Verdict, Decision, datetime], Outcome
    ]

__all__ = ["Decision", "Ingestor", "Prepared"]

log = logging.getLogger("mailbridge.ingest")


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
        self.tagger = settings.addressing.tagger
        self.policy = classify.Policy(
            identity=settings.outbound.identity or "mailbridge",
            agent_addresses=frozenset(a.lower() for a in agents.addresses),
            agent_domains=frozenset(d.lower().lstrip("@") for d in agents.domains),
            trusted_authserv_ids=frozenset(a.lower() for a in agents.trusted_authserv_ids),
            blocked=frozenset(b.lower() for b in settings.tickets.blocked_senders),
        )
        self.tickets = Tickets(settings, self.policy, Routes(settings), self._assigned)
        self.customer = CustomerMail(self.tickets, self.outbound, self.clock)
        self.agent = AgentMail(self.tickets, self.outbound)

    def _assigned(self, strategy: str) -> None:
        if self.on_assign is not None:
            self.on_assign(strategy)

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
            prepare(raw, env, src, result)
            for (raw, env, src), result in zip(items, results, strict=True)
        ]
        started = self.clock()
        try:
            outcomes = batch.commit(self.store, prepared, self._decide, self.clock)
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

    def accept_each(
        self,
        items: Sequence[tuple[bytes, Envelope, Source]],
        parsed: Sequence[ParseResult | None] | None = None,
    ) -> list[Outcome | Exception]:
        """`accept_many` for a source that answers each message on its own (SMTP, LMTP): when the
        batch cannot commit as a whole, each message gets its own transaction and its own answer
        (a message that did commit on the way comes back as a duplicate, which is still a 250),
        and an error costs only the message it belongs to."""
        try:
            return list(self.accept_many(items, parsed))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        found = list(parsed) if parsed is not None else [None] * len(items)
        results: list[Outcome | Exception] = []
        for (raw, envelope, source), result in zip(items, found, strict=True):
            try:
                results.append(self.accept(raw, envelope, source, result))
            except Exception as exc:
                results.append(exc)
        return results

    def quarantine_raw(
        self, raw: bytes, envelope: Envelope, source: Source, reason: str
    ) -> Outcome:
        """Park mail that must not go through the pipeline (e.g. oversize from IMAP), raw, with the reason."""
        p = unparsed(raw, envelope, source, reason)
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
            outcome = batch.park(session, p, reason, "", self.clock())
        log.info("%s quarantined reason=%s", source.kind, reason)
        if self.on_outcome:
            self.on_outcome(outcome, source, 0.0)
        return replace(outcome, source=source.name)

    def explain(self, raw: bytes, envelope: Envelope, source: Source) -> Outcome:
        """Decide like `accept` and say why, but write nothing (`ingest --dry-run`)."""
        p = prepare(raw, envelope, source, self.parser.parse_many([raw])[0])
        return batch.trial(self.store, p, self._decide, self.clock)

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

    # --- one message --------------------------------------------------------------------

    def _decide(self, session: Session, p: Prepared, seen: batch.Seen) -> Outcome:
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
            return batch.park(session, p, p.parse_error or "unparseable", "", self.clock())
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
        found = match(Stored(session), keys, msg, verdict, self.tagger)
        return self._ACTIONS[verdict.action](self, session, p, verdict, found, now)

    # --- what each rule action does -----------------------------------------------------

    def _ticket(
        self,
        session: Session,
        p: Prepared,
        verdict: classify.Verdict,
        found: Decision,
        now: datetime,
    ) -> Outcome:
        if verdict.agent:
            return self.agent.handle(session, p, verdict, found, now)
        return self.customer.handle(session, p, verdict, found, now)

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
            return batch.park(session, p, verdict.rule, detail, self.clock(), kind="ignored")
        why = verdict.with_hits(f"{verdict.rule}; {found.rule}")
        message = self.tickets.store_message(session, p, ticket, "inbound", "system", why, now)
        record = lifecycle.Record(
            now,
            verdict.kind,
            actor(p),
            ticket.status,
            ticket.status,
            verdict.with_hits(verdict.rule),
        )
        repo.add_events(session, ticket.number, [record], message.id)
        ticket.updated_at = now
        return Outcome(
            "appended", ticket.number, f"{verdict.rule}; {found.rule}; status unchanged", message.id
        )

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
        ticket, message, routed = self.tickets.create(
            session, p, verdict, verdict.with_hits(f"new ticket: {verdict.rule}"), now, None
        )
        if ticket.status != Status.SPAM:
            self.tickets.transition(
                session,
                ticket,
                lifecycle.Event(Kind.SPAM, f"rule:{verdict.rule.split(':')[0]}"),
                now,
                message.id,
            )
        return Outcome("created", ticket.number, f"{verdict.rule} -> spam; {routed}", message.id)

    # the verdict is data: its action picks what ingest does, no if-chain over rule names
    _ACTIONS: ClassVar[Mapping[classify.Action, _Handler]] = {
        classify.Action.TICKET: _ticket,
        classify.Action.NOT_A_TICKET: _not_a_ticket,
        classify.Action.SPAM: _spam,
    }
