"""The SLA sweep (SPEC 8): recompute a ticket's due times from its events, record each target
it newly missed, and tell the agents."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailbridge import lifecycle, sla
from mailbridge.lifecycle import Status
from mailbridge.storage import repo
from mailbridge.sweeps.common import SLA_BREACH, Change, Run, SlaPolicies

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.sweeps")

_FINISHED = frozenset({Status.CLOSED, Status.SPAM, Status.DELETED})


def sla_clock(
    settings: Settings, ticket: Ticket, events: Iterable[Any]
) -> tuple[sla.Clock | None, str | None]:
    """The ticket's SLA targets from its stored events (pure computation in `mailbridge.sla`)."""
    return SlaPolicies.from_settings(settings).clock(ticket, events)


def sla_sweep(run: Run, number: int, at: datetime, dry_run: bool) -> list[Change]:
    """Recompute the ticket's due times from its events; record each newly missed target."""
    with run.store.unit() as session:
        ticket = repo.lock_ticket(session, number)
        if ticket is None:
            return []
        clock, policy = run.config.sla.clock(ticket, repo.ticket_events(session, number))
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
                Change(number, ticket.status, ticket.status, f"sla {policy}", "sla_breach", detail)
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
            if run.outbound is not None:
                due = _due(clock, target)
                values: dict[str, object] = {
                    "target": target,
                    "sla": policy,
                    "due": due.isoformat() if due else "",
                    "detail": f"missed by {sla.describe(by)}",
                }
                run.outbound.sla_breach_notice(session, ticket, values, at)
            if run.on_breach is not None:
                run.on_breach(ticket.queue, target)
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


def _due(clock: sla.Clock | None, name: str) -> datetime | None:
    target = clock.target(name) if clock else None
    return target.due if target else None
