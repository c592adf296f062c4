"""The report's rows from storage, and the report assembled from them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailbridge.report import sections as s
from mailbridge.report.breakdowns import breakdowns
from mailbridge.report.sections import EventRow, TicketRow
from mailbridge.storage import repo
from mailbridge.views import iso

if TYPE_CHECKING:
    from mailbridge.storage import Store


def build_report(
    store: Store, now: datetime, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    with store.unit() as session:
        tickets = repo.all_tickets(session)
        events = repo.all_events(session)
        tags = repo.all_tags(session)
    return summarize(tickets, events, now, since, until, tags)


def summarize(
    tickets: Sequence[TicketRow],
    events: Iterable[EventRow],
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    tags: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The report from plain rows (events in time order per ticket); pure."""
    tickets = [
        t
        for t in tickets
        if (since is None or t.created_at >= since) and (until is None or t.created_at < until)
    ]
    numbers = {t.number for t in tickets}
    end = min(now, until) if until else now
    by_ticket: s.History = defaultdict(list)
    for event in events:
        if event.ticket_number in numbers and event.at <= end:
            by_ticket[event.ticket_number].append(event)
    for history in by_ticket.values():
        history.sort(key=lambda e: e.at)
    live = [t for t in tickets if t.status not in s.NOT_WAITING]
    return {
        "generated_at": iso(now),
        "period": {"since": iso(since), "until": iso(until)},
        "tickets": {"total": len(tickets), "by_status": s.by_status(tickets)},
        "first_response": s.delays(tickets, live, by_ticket, s.FIRST_RESPONSE),
        "resolution": s.delays(tickets, live, by_ticket, s.RESOLUTION),
        "reopen": s.reopen(tickets, by_ticket),
        "time_in_status": s.time_in_status(tickets, by_ticket, end),
        "mailboxes": s.mailboxes(tickets),
        "created_per_day": s.created_per_day(tickets, since, until),
        "queues": s.queues(tickets, by_ticket),
        "transitions": s.transitions(by_ticket),
        "closed_by": s.closed_by(by_ticket),
        "sla": s.sla(tickets, by_ticket),
        **breakdowns(tickets, by_ticket, tags or {}),
    }
