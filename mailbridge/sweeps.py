"""Time rules: wake due postponements, then run each `[[rules]]` rule (idle -> resolved/closed/purge).

Each swept ticket is its own unit of work: claim it (`lock_ticket_if`: the row is locked, and only
taken if it still has the status the sweep expects), re-check the time condition inside the
transaction, apply the lifecycle, queue any notice, commit. A second run, a late run or another
node running at the same moment finds the condition no longer true (or the row locked) and does
nothing, so every transition and every notice happens exactly once. Nothing is scheduled per
ticket: due times live in ticket columns, so a run after downtime simply finds more work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from mailbridge import lifecycle, sla
from mailbridge.clock import Clock, system_clock
from mailbridge.errors import IllegalTransition
from mailbridge.lifecycle import Kind, Note, Status
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Rule, Settings
    from mailbridge.storage import Session, Store
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.sweeps")

WAKE = "wake"  # the built-in rule that ends postponements
PURGED = "purged"  # `to_status` of a Change that removed the ticket
_KINDS = {"resolved": Kind.RESOLVE, "closed": Kind.CLOSE}
_FINISHED = frozenset({Status.CLOSED, Status.SPAM, Status.DELETED})

# (rule name, changes made) after each rule's pass; metrics count rule runs with it
RuleObserver = Callable[[str, int], None]
# (queue, target) for each recorded SLA breach
BreachObserver = Callable[[str, str], None]
SLA_BREACH = Note.SLA_BREACH  # the stored event kind (SPEC 8's `sla_breach`, as webhooks match it)


@dataclass(frozen=True, slots=True)
class Change:
    """One ticket a sweep changed (or, in a dry run, would change)."""

    number: int
    from_status: str
    to_status: str
    rule: str
    action: str = "status"  # status | sla_breach | remind | escalate
    detail: str | None = None

    def describe(self) -> str:
        if self.action != "status":
            return f"#{self.number} {self.action}: {self.detail} ({self.rule})"
        return f"#{self.number} {self.from_status} -> {self.to_status} (rule {self.rule})"

    def as_json(self) -> dict[str, Any]:
        return {
            "ticket": self.number,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "rule": self.rule,
            # status changes keep the shape scripts already read; other actions say what they are
            **({"action": self.action, "detail": self.detail} if self.action != "status" else {}),
        }


class Sweeps:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock = system_clock,
        outbound: Any = None,
        on_rule: RuleObserver | None = None,
        batch_size: int = 200,
        on_breach: BreachObserver | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.outbound = outbound
        self.on_rule = on_rule
        self.on_breach = on_breach
        self.batch_size = batch_size

    def reload(self, settings: Settings) -> None:
        # one attribute swap: a run in progress keeps the rules it started with
        self.settings = settings

    def run(
        self, at: datetime, dry_run: bool = False, halt: threading.Event | None = None
    ) -> list[Change]:
        """Everything due as of `at`: postponements first, then the rules in config order.

        `halt` (set by the scheduler on shutdown) stops between tickets; the rest waits for
        the next run, which is safe because every ticket is committed on its own.
        """
        rules = self.settings.rules
        changes = self._pass(
            WAKE,
            dry_run,
            halt,
            lambda s, limit: repo.due_postponed(s, at, limit),
            lambda number: self._wake(number, at, dry_run),
        )
        if self.settings.sla:
            # due times of tickets that changed, then the targets that ran out: both claim
            # each ticket on its own, so a second run or node records nothing twice
            changes += self._pass(
                "sla",
                dry_run,
                halt,
                lambda s, limit: repo.sla_stale_tickets(s, limit),
                lambda number: self._sla(number, at, dry_run),
            )
            changes += self._pass(
                "sla",
                dry_run,
                halt,
                lambda s, limit: repo.sla_due_tickets(s, at, limit),
                lambda number: self._sla(number, at, dry_run),
            )
            if dry_run:
                # nothing is written in a dry run, so a stale ticket is also still due: list once
                unique = {(c.number, c.action, c.detail): c for c in changes}
                changes = list(unique.values())
        for rule in rules:
            changes += self._pass(
                rule.name,
                dry_run,
                halt,
                _idle_finder(rule, at),
                partial(self._apply_rule, rule, at=at, dry_run=dry_run),
            )
        return changes

    # --- one pass: candidates in batches, each ticket claimed on its own ------------------

    def _pass(
        self,
        rule: str,
        dry_run: bool,
        halt: threading.Event | None,
        candidates: Callable[[Session, int], list[int]],
        one: Callable[[int], Change | list[Change] | None],
    ) -> list[Change]:
        changes: list[Change] = []
        for number in self._candidates(candidates, halt):
            result = one(number)
            if isinstance(result, list):
                changes += result
            elif result is not None:
                changes.append(result)
        if not dry_run and self.on_rule is not None:
            self.on_rule(rule, len(changes))
        return changes

    def _candidates(
        self, query: Callable[[Session, int], list[int]], halt: threading.Event | None
    ) -> Iterator[int]:
        """Every due ticket number once, fetched in batches between which tickets are processed.

        Processed tickets leave the due set; the ones that stay (locked by another node, or a
        dry run) are remembered, and the next fetch asks for that many more rows, so a batch
        of leftovers cannot hide the tickets behind it and the loop ends when nothing is new.
        """
        seen: set[int] = set()
        while not (halt and halt.is_set()):
            with self.store.unit() as session:
                numbers = query(session, len(seen) + self.batch_size)
            fresh = [n for n in numbers if n not in seen]
            if not fresh:
                return
            for number in fresh:
                if halt and halt.is_set():
                    return
                seen.add(number)
                yield number

    # --- postponements ---------------------------------------------------------------------

    def _wake(self, number: int, at: datetime, dry_run: bool) -> Change | None:
        with self.store.unit() as session:
            ticket = repo.lock_ticket_if(session, number, Status.POSTPONED)
            if ticket is None or ticket.postponed_until is None or ticket.postponed_until > at:
                return None  # another run woke it, or the agent moved the date meanwhile
            event = lifecycle.Event(Kind.WAKE, f"rule:{WAKE}")
            return self._transition(session, ticket, event, WAKE, at, dry_run)

    # --- configured rules ------------------------------------------------------------------

    def _apply_rule(self, rule: Rule, number: int, at: datetime, dry_run: bool) -> Change | None:
        with self.store.unit() as session:
            ticket = repo.lock_ticket(session, number)
            # re-checked under the lock: a mail may have arrived since the candidates were read
            if (
                ticket is None
                or ticket.status not in rule.statuses
                or ticket.last_activity_at > at - rule.idle_for
                or not narrowed(rule, ticket, _ticket_tags(session, number))
            ):
                return None
            if rule.then == "purge":
                return self._purge(session, ticket, rule, at, dry_run)
            if rule.then in ("remind", "escalate"):
                return self._mail_rule(session, ticket, rule, at, dry_run)
            event = lifecycle.Event(
                _KINDS[rule.then], f"rule:{rule.name}", detail=f"idle for {_span(rule.idle_for)}"
            )
            change = self._transition(session, ticket, event, rule.name, at, dry_run)
            if change is not None and rule.notify and not dry_run:
                self._notify(session, ticket, rule, at)
            return change

    def _mail_rule(
        self, session: Session, ticket: Ticket, rule: Rule, at: datetime, dry_run: bool
    ) -> Change | None:
        """`remind` / `escalate`: once per quiet spell, and without touching the idle time.

        The spell is the time since the ticket's last message or status change
        (`last_activity_at`); an event of this rule inside it means it already fired. Neither the
        event nor the mail moves `last_activity_at`, so later rules still count from the spell's
        start (remind at 5d, resolve at 7d)."""
        actor = f"rule:{rule.name}"
        spell = ticket.last_activity_at
        if any(
            e.kind == rule.then and e.actor == actor and e.at >= spell
            for e in repo.ticket_events(session, ticket.number)
        ):
            return None
        idle = _span(rule.idle_for)
        recipients = None
        detail = f"idle for {idle}"
        if rule.reassign:
            done = "reassign" if dry_run else self._reassign(session, ticket, rule, at)
            detail += f"; {done}"
        if rule.then == "escalate":
            recipients = self._escalation_recipients(ticket, rule)
            detail += f"; to {', '.join(recipients) or 'nobody'}"
        change = Change(ticket.number, ticket.status, ticket.status, rule.name, rule.then, detail)
        if dry_run:
            return change
        record = lifecycle.Record(at, rule.then, actor, ticket.status, ticket.status, detail)
        repo.add_events(session, ticket.number, [record], None)
        send = getattr(self.outbound, "rule_mail", None)
        if send is not None:
            values = {"rule": rule.name, "idle": idle}
            send(session, ticket, rule.then, values, at, rule.template, recipients)
        log.info("%s", change.describe())
        return change

    def _reassign(self, session: Session, ticket: Ticket, rule: Rule, at: datetime) -> str:
        """Unown the ticket and let its queue's strategy pick again, never the previous owner."""
        try:
            from mailbridge import assignment, ownership  # queues and owners (SPEC 7)
        except ImportError:
            log.warning("rule %s: reassign needs queues and owners (SPEC 7)", rule.name)
            return "not reassigned: no queues"
        previous = getattr(ticket, "owner", None)
        queue = queue_of(ticket)
        settings: Any = self.settings
        members = [m for m in settings.queue_members(queue) if m != previous]
        choice = assignment.choose(
            settings.queue(queue).assign,
            members,
            take_turn=lambda: repo.take_turn(session, queue),
            open_counts=lambda: repo.open_counts(session, members),
            last_owner=lambda: None,  # sticky would give it straight back
        )
        what = f"reassigned {previous or 'none'} -> {choice.owner or 'none'} ({choice.detail})"
        ownership.assign(
            session, settings, ticket, choice.owner, f"rule:{rule.name}", at, detail=what
        )
        return what

    def _escalation_recipients(self, ticket: Ticket, rule: Rule) -> list[str]:
        found: list[str] = []
        for entry in rule.to:
            if entry == "owner":
                owner = getattr(ticket, "owner", None)
                found += [owner] if owner else []
            elif entry == "queue":
                addresses = getattr(self.outbound, "queue_notify_addresses", None)
                found += addresses(ticket) if addresses else []
            else:
                found.append(entry)
        return list(dict.fromkeys(a.lower() for a in found))

    def _purge(
        self, session: Session, ticket: Ticket, rule: Rule, at: datetime, dry_run: bool
    ) -> Change:
        change = Change(ticket.number, ticket.status, PURGED, rule.name)
        if not dry_run:
            removed = repo.purge_ticket(session, ticket.number, at)
            log.info("%s; %d messages removed, tombstones kept", change.describe(), removed)
        return change

    # --- SLA ---------------------------------------------------------------------------------

    def _sla(self, number: int, at: datetime, dry_run: bool) -> list[Change]:
        """Recompute the ticket's due times from its events; record each newly missed target."""
        with self.store.unit() as session:
            ticket = repo.lock_ticket(session, number)
            if ticket is None:
                return []
            clock, policy = sla_clock(self.settings, ticket, repo.ticket_events(session, number))
            recorded = [t for t in (ticket.sla_breached or "").split(",") if t]
            changes = []
            # a ticket that left normal life keeps its history: enabling an SLA on an old
            # database must not report every closed ticket of the past as a breach today
            live = ticket.status not in _FINISHED
            for missed, by in clock.missed(at) if clock and live else []:
                target = missed.name
                if missed.key in recorded:
                    continue
                detail = f"{target} by {sla.describe(by)}"
                changes.append(
                    Change(
                        number, ticket.status, ticket.status, f"sla {policy}", "sla_breach", detail
                    )
                )
                # one next_response marker: the newest wait (the column stays short)
                recorded = [r for r in recorded if r.partition("@")[0] != target]
                recorded.append(missed.key)
                if dry_run:
                    continue
                record = lifecycle.Record(
                    at, SLA_BREACH, f"sla:{policy}", ticket.status, ticket.status, detail
                )
                repo.add_events(session, number, [record], None)
                log.warning("ticket #%d: SLA %s missed %s", number, policy, detail)
                notice = getattr(self.outbound, "sla_breach_notice", None)
                if notice is not None:
                    due = _due(clock, target)
                    values = {
                        "target": target,
                        "sla": policy,
                        "due": due.isoformat() if due else "",
                        "detail": f"missed by {sla.describe(by)}",
                    }
                    notice(session, ticket, values, at)
                if self.on_breach is not None:
                    self.on_breach(queue_of(ticket), target)
            if dry_run:
                session.rollback()
                return changes
            ticket.sla_name = policy
            ticket.first_response_due = _due(clock, "first_response")
            ticket.next_response_due = _due(clock, "next_response")
            ticket.resolution_due = _due(clock, "resolution")
            ticket.sla_due = clock.next_due(at, recorded) if clock and live else None
            ticket.sla_breached = ",".join(recorded) or None
            ticket.sla_stale = False
            return changes

    # --- building blocks -------------------------------------------------------------------

    def _transition(
        self,
        session: Session,
        ticket: Ticket,
        event: lifecycle.Event,
        rule: str,
        at: datetime,
        dry_run: bool,
    ) -> Change | None:
        try:
            transition = lifecycle.apply(repo.ticket_state(ticket), event, at)
        except IllegalTransition as exc:
            # config validation keeps rules to legal transitions; a row changed by hand might not
            log.warning("ticket #%d: rule %s skipped: %s", ticket.number, rule, exc)
            return None
        if not transition.changed:
            return None
        change = Change(ticket.number, ticket.status, transition.state.status.value, rule)
        if not dry_run:
            repo.save_transition(session, ticket, transition, at)
            log.info("%s", change.describe())
        return change

    def _notify(self, session: Session, ticket: Ticket, rule: Rule, at: datetime) -> None:
        """Queue the rule's notice in the transition's own transaction: exactly once with it."""
        notice = getattr(self.outbound, "rule_notice", None)
        if notice is None:
            log.debug("rule %s: notify is set but outbound cannot send rule notices", rule.name)
            return
        if rule.template is not None:
            notice(session, ticket, rule.name, at, template=rule.template)
        else:
            notice(session, ticket, rule.name, at)


def _idle_finder(rule: Rule, at: datetime) -> Callable[[Session, int], list[int]]:
    """One rule's candidates; a function of its own so that each rule's finder keeps its rule."""
    return lambda s, limit: repo.idle_tickets_in(
        s, rule.statuses, at - rule.idle_for, limit, _fires_once(rule)
    )


def _fires_once(rule: Rule) -> tuple[str, str] | None:
    """The event that marks a remind/escalate rule as done for the current quiet spell."""
    return (rule.then, f"rule:{rule.name}") if rule.then in ("remind", "escalate") else None


def narrowed(rule: Rule, ticket: Ticket, tags: Iterable[str] = ()) -> bool:
    """Whether a rule's optional `queue`, `priority` and `tags` (all of them) take this ticket."""
    if rule.queue is not None and queue_of(ticket) != rule.queue:
        return False
    priority = getattr(ticket, "priority", None) or "normal"
    if rule.priority is not None and priority != rule.priority:
        return False
    return set(rule.tags) <= set(tags)


def _ticket_tags(session: Session, number: int) -> list[str]:
    # tags are rows of their own (SPEC 7); before they exist no ticket has any
    tags_of = getattr(repo, "tags_of", None)
    return list(tags_of(session, [number]).get(number, [])) if tags_of else []


def queue_of(ticket: Ticket) -> str:
    """The ticket's queue; `support` for every ticket until queues exist (SPEC 7)."""
    return getattr(ticket, "queue", None) or "support"


def policy_for(settings: Settings, ticket: Ticket) -> sla.Policy | None:
    """The first `[[sla]]` whose queues and priorities take the ticket."""
    priority = getattr(ticket, "priority", None) or "normal"
    for entry in settings.sla:
        if entry.applies(queue_of(ticket), priority):
            return sla.Policy(
                entry.name,
                settings.calendar_for(entry),
                entry.first_response,
                entry.next_response,
                entry.resolution,
            )
    return None


def sla_clock(
    settings: Settings, ticket: Ticket, events: Iterable[Any]
) -> tuple[sla.Clock | None, str | None]:
    """The ticket's SLA targets from its stored events (pure computation in `mailbridge.sla`)."""
    policy = policy_for(settings, ticket)
    if policy is None:
        return None, None
    history = [sla.HistoryEvent(e.at, e.kind, e.to_status) for e in events]
    return sla.compute(policy, ticket.created_at, history), policy.name


def _due(clock: sla.Clock | None, name: str) -> datetime | None:
    target = clock.target(name) if clock else None
    return target.due if target else None


def _span(delta: timedelta) -> str:
    """`7d`, `36h`, `90m`, `45s`: how config writes durations."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
