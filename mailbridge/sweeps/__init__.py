"""Time rules: wake due postponements, then run each `[[rules]]` rule (idle -> resolved/closed/purge).

Each swept ticket is its own unit of work: claim it (`lock_ticket_if`: the row is locked, and only
taken if it still has the status the sweep expects), re-check the time condition inside the
transaction, apply the lifecycle, queue any notice, commit. A second run, a late run or another
node running at the same moment finds the condition no longer true (or the row locked) and does
nothing, so every transition and every notice happens exactly once. Nothing is scheduled per
ticket: due times live in ticket columns, so a run after downtime simply finds more work.

`status` wakes and resolves/closes/purges, `reminders` mails (remind, escalate), `sla_breaches`
keeps SLA due times and records misses; this module runs them in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from mailbridge.clock import Clock, system_clock
from mailbridge.storage import repo
from mailbridge.sweeps.common import (
    PURGED,
    SLA_BREACH,
    WAKE,
    BreachObserver,
    Change,
    RuleMail,
    RuleObserver,
    Run,
    SweepConfig,
)
from mailbridge.sweeps.sla_breaches import sla_clock, sla_sweep
from mailbridge.sweeps.status import apply_rule, wake

if TYPE_CHECKING:
    from mailbridge.config import Rule, Settings
    from mailbridge.storage import Session, Store

__all__ = [
    "PURGED",
    "SLA_BREACH",
    "WAKE",
    "BreachObserver",
    "Change",
    "RuleMail",
    "RuleObserver",
    "SweepConfig",
    "Sweeps",
    "sla_clock",
]

Candidates = Callable[["Session", int], list[int]]


class Sweeps:
    def __init__(
        self,
        store: Store,
        config: SweepConfig,
        clock: Clock = system_clock,
        outbound: RuleMail | None = None,
        on_rule: RuleObserver | None = None,
        batch_size: int = 200,
        on_breach: BreachObserver | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.outbound = outbound
        self.on_rule = on_rule
        self.on_breach = on_breach
        self.batch_size = batch_size

    def reload(self, settings: Settings) -> None:
        # one attribute swap: a run in progress keeps the config it started with
        self.config = SweepConfig.from_settings(settings)

    def run(
        self, at: datetime, dry_run: bool = False, halt: threading.Event | None = None
    ) -> list[Change]:
        """Everything due as of `at`: postponements first, then the rules in config order.

        `halt` (set by the scheduler on shutdown) stops between tickets; the rest waits for
        the next run, which is safe because every ticket is committed on its own.
        """
        run = Run(self.store, self.config, self.outbound, self.on_breach)
        changes = self._pass(
            WAKE,
            dry_run,
            halt,
            lambda s, limit: repo.due_postponed(s, at, limit),
            lambda number: wake(run, number, at, dry_run),
        )
        if run.config.sla:
            # due times of tickets that changed, then the targets that ran out: both claim
            # each ticket on its own, so a second run or node records nothing twice
            changes += self._pass(
                "sla",
                dry_run,
                halt,
                lambda s, limit: repo.sla_stale_tickets(s, limit),
                lambda number: sla_sweep(run, number, at, dry_run),
            )
            changes += self._pass(
                "sla",
                dry_run,
                halt,
                lambda s, limit: repo.sla_due_tickets(s, at, limit),
                lambda number: sla_sweep(run, number, at, dry_run),
            )
            if dry_run:
                # nothing is written in a dry run, so a stale ticket is also still due: list once
                unique = {(c.number, c.action, c.detail): c for c in changes}
                changes = list(unique.values())
        for rule in run.config.rules:
            changes += self._pass(
                rule.name,
                dry_run,
                halt,
                _idle_finder(rule, at),
                partial(apply_rule, run, rule, at=at, dry_run=dry_run),
            )
        return changes

    # --- one pass: candidates in batches, each ticket claimed on its own ------------------

    def _pass(
        self,
        rule: str,
        dry_run: bool,
        halt: threading.Event | None,
        candidates: Candidates,
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

    def _candidates(self, query: Candidates, halt: threading.Event | None) -> Iterator[int]:
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


def _idle_finder(rule: Rule, at: datetime) -> Candidates:
    """One rule's candidates; a function of its own so that each rule's finder keeps its rule."""
    return lambda s, limit: repo.idle_tickets_in(
        s, rule.statuses, at - rule.idle_for, limit, _fires_once(rule)
    )


def _fires_once(rule: Rule) -> tuple[str, str] | None:
    """The event that marks a remind/escalate rule as done for the current quiet spell."""
    return (rule.then, f"rule:{rule.name}") if rule.then in ("remind", "escalate") else None
