"""The report's lifecycle sections, each a pure function of ticket rows and their events (in time
order per ticket); what each key means is in the package's docstring."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from mailbridge.lifecycle import CONFIRMED, Kind, Note, Status
from mailbridge.report.stats import distribution, histogram, seconds

STATUSES = tuple(s.value for s in Status)
ENDED = frozenset({Status.RESOLVED.value, Status.CLOSED.value})
NOT_WAITING = frozenset({Status.SPAM.value, Status.DELETED.value})
DEFAULT_QUEUE = "support"
FIRST_RESPONSE = frozenset({Kind.AGENT_REPLY.value})
RESOLUTION = frozenset({Kind.RESOLVE.value, Kind.CLOSE.value})


class TicketRow(Protocol):
    number: int
    status: str
    mailbox: str
    created_at: datetime
    follow_up_of: int | None


class EventRow(Protocol):
    ticket_number: int
    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None


History = dict[int, list[EventRow]]  # each ticket's events, by ticket number


def queue_of(ticket: TicketRow) -> str:
    """The one place a ticket's queue is read (SPEC 7); rows without one are `support`'s."""
    return getattr(ticket, "queue", None) or DEFAULT_QUEUE


def by_status(tickets: Iterable[TicketRow]) -> dict[str, int]:
    counts = Counter(t.status for t in tickets)
    return {s: counts.get(s, 0) for s in [*STATUSES, *sorted(set(counts) - set(STATUSES))]}


def delays(
    tickets: Sequence[TicketRow],
    live: Sequence[TicketRow],
    by_ticket: History,
    kinds: frozenset[str],
) -> dict[str, Any]:
    """Seconds from creation to the first event of one of `kinds`, as a distribution."""
    found = delay_values(tickets, by_ticket, kinds)
    pending = sum(1 for t in live if t.number not in found)
    return {"count": len(found), "pending": pending, **distribution(list(found.values()))}


def delay_values(
    tickets: Sequence[TicketRow], by_ticket: History, kinds: frozenset[str]
) -> dict[int, float]:
    found: dict[int, float] = {}
    for t in tickets:
        first = next((e for e in by_ticket.get(t.number, ()) if e.kind in kinds), None)
        if first is not None:
            found[t.number] = (first.at - t.created_at).total_seconds()
    return found


def queues(tickets: Sequence[TicketRow], by_ticket: History) -> dict[str, Any]:
    groups: dict[str, list[TicketRow]] = defaultdict(list)
    for t in tickets:
        groups[queue_of(t)].append(t)
    out: dict[str, Any] = {}
    for name, group in sorted(groups.items()):
        live = [t for t in group if t.status not in NOT_WAITING]
        entry: dict[str, Any] = {"tickets": len(group), "by_status": by_status(group)}
        for key, kinds in (("first_response", FIRST_RESPONSE), ("resolution", RESOLUTION)):
            values = delay_values(group, by_ticket, kinds)
            entry[key] = delays(group, live, by_ticket, kinds) | {
                "histogram": histogram(values.values())
            }
        out[name] = entry
    return out


def created_per_day(
    tickets: Sequence[TicketRow], since: datetime | None, until: datetime | None
) -> dict[str, dict[str, int]]:
    days = [t.created_at.date() for t in tickets]
    first = since.date() if since else min(days, default=None)
    last = (until - timedelta(microseconds=1)).date() if until else max(days, default=None)
    if first is None or last is None:
        return {}
    names = sorted({queue_of(t) for t in tickets}) or [DEFAULT_QUEUE]
    counts = Counter((t.created_at.date(), queue_of(t)) for t in tickets)
    out: dict[str, dict[str, int]] = {}
    day: date = first
    while day <= last:
        out[day.isoformat()] = {q: counts.get((day, q), 0) for q in names}
        day += timedelta(days=1)
    return out


def transitions(by_ticket: History) -> list[dict[str, Any]]:
    counts = Counter(
        (e.from_status, e.to_status)
        for history in by_ticket.values()
        for e in history
        if e.to_status and e.from_status != e.to_status
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return [{"from": a, "to": b, "count": n} for (a, b), n in ordered]


def sla(tickets: Sequence[TicketRow], by_ticket: History) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for t in tickets:
        if not getattr(t, "sla_name", None):
            continue
        missed = any(e.kind == Note.SLA_BREACH for e in by_ticket.get(t.number, []))
        counts[queue_of(t)]["breached" if missed else "met"] += 1

    def rates(met: int, breached: int) -> dict[str, Any]:
        rate = round(met / (met + breached), 4) if met + breached else None
        return {"met": met, "breached": breached, "rate": rate}

    total = rates(
        sum(c["met"] for c in counts.values()), sum(c["breached"] for c in counts.values())
    )
    return {
        "configured": bool(counts),
        **total,
        "queues": {q: rates(c["met"], c["breached"]) for q, c in sorted(counts.items())},
    }


def closed_by(by_ticket: History) -> dict[str, int]:
    counts = {"customer": 0, "agent": 0, "rule": 0}
    for history in by_ticket.values():
        for e in history:
            if e.to_status != Status.CLOSED.value or e.from_status == Status.CLOSED.value:
                continue
            if getattr(e, "detail", None) == CONFIRMED:
                counts["customer"] += 1
            elif str(getattr(e, "actor", "")).startswith("rule:"):
                counts["rule"] += 1
            else:
                counts["agent"] += 1
    return counts


def reopen(
    tickets: Sequence[TicketRow],
    by_ticket: History,
    followed_up: set[int] | None = None,
) -> dict[str, Any]:
    if followed_up is None:
        followed_up = {t.follow_up_of for t in tickets if t.follow_up_of is not None}
    resolved = reopened = 0
    for t in tickets:
        history = by_ticket.get(t.number, [])
        if not any(e.to_status in ENDED for e in history):
            continue
        resolved += 1
        came_back = any(
            e.from_status in ENDED and e.to_status == Status.OPEN.value for e in history
        )
        reopened += came_back or t.number in followed_up
    rate = round(reopened / resolved, 4) if resolved else None
    return {"resolved": resolved, "reopened": reopened, "rate": rate}


def time_in_status(
    tickets: Sequence[TicketRow], by_ticket: History, now: datetime
) -> dict[str, Any]:
    totals: dict[str, float] = defaultdict(float)
    visitors: dict[str, set[int]] = defaultdict(set)
    for t in tickets:
        for status, spent in _spans(t, by_ticket.get(t.number, []), now):
            totals[status] += spent
            visitors[status].add(t.number)
    out: dict[str, Any] = {}
    for status in [*STATUSES, *sorted(set(totals) - set(STATUSES))]:
        n = len(visitors.get(status, ()))
        total = totals.get(status, 0.0)
        out[status] = {
            "tickets": n,
            "total_seconds": seconds(total),
            "mean_seconds": seconds(total / n) if n else None,
        }
    return out


def _spans(ticket: TicketRow, history: list[EventRow], now: datetime) -> list[tuple[str, float]]:
    """(status, seconds) for each stretch of the ticket's life; the last one lasts until now."""
    changes = [(e.at, e.to_status) for e in history if e.to_status]
    if not changes:  # a ticket without events: all its life in its current status
        changes = [(ticket.created_at, ticket.status)]
    ends = [at for at, _ in changes[1:]] + [now]
    return [
        (status, max((end - start).total_seconds(), 0.0))
        for (start, status), end in zip(changes, ends, strict=True)
    ]


def mailboxes(tickets: Iterable[TicketRow]) -> dict[str, Any]:
    groups: dict[str, list[TicketRow]] = defaultdict(list)
    for t in tickets:
        groups[t.mailbox or "(unknown)"].append(t)
    return {
        name: {"tickets": len(group), "by_status": by_status(group)}
        for name, group in sorted(groups.items())
    }
