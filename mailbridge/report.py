"""`mailbridge report`: lifecycle analytics computed from tickets and their events.

JSON keys (durations are seconds, floats rounded to milliseconds; times ISO 8601 UTC with `Z`):

- `generated_at`: the `now` the report was computed for.
- `tickets`: `{total, by_status: {status: n}}`, every status listed.
- `first_response`, `resolution`: `{count, pending, mean, p50, p90, p99}`. First response is
  created -> first `agent-reply` event; resolution is created -> first `resolve` or `close`
  event. `count` tickets have one; `pending` live tickets (not spam, deleted) have none yet.
  Percentiles interpolate linearly between ranks; all are null when `count` is 0.
- `reopen`: `{resolved, reopened, rate}`. `resolved` tickets ever reached resolved or closed;
  `reopened` of them came back: a transition from resolved or closed to open, or a follow-up
  ticket (customer mail on a closed ticket) links to them. `rate` = reopened / resolved, or null.
- `time_in_status`: `{status: {tickets, total_seconds, mean_seconds}}`, every status listed:
  time between consecutive status changes, the current status counting until `now`;
  `mean_seconds` is per ticket that spent time in the status (null if none did).
- `mailboxes`: `{mailbox: {tickets, by_status}}` by the source that created the ticket.
- `period`: `{since, until}` as asked (`--since`, `--until`), null when open. Only tickets
  created in the period count; time in status ends at `until` when that is before `now`.
- `created_per_day`: `{YYYY-MM-DD: {queue: n}}` for every day from the first ticket to the last
  (or the period's bounds), days without tickets at 0.
- `queues`: `{queue: {tickets, by_status, first_response, resolution}}`, the two delays as above
  plus `histogram`: `[{bucket, count}]` over `HISTOGRAM_BUCKETS`; a ticket's queue is read in
  one place (`queue_of`).
- `transitions`: `[{from, to, count}]`, how often each status change happened (events with a
  from and a to status that differ; `created` counts as from null), most frequent first.
- `closed_by`: `{customer, agent, rule}`: closes (a change to `closed`) by the customer's
  confirmation (detail `confirmed by customer`), by a `[[rules]]` rule (actor `rule:...`), and
  by anyone else (an agent's `#close` or the CLI). A confirmation is a close, not a reopen.
- `sla`: `{configured, met, breached, rate, queues: {queue: {met, breached, rate}}}` over the
  tickets an `[[sla]]` applies to (SPEC 8): `breached` tickets have an `sla-breach` event,
  `met` ones do not (yet); `rate` = met / (met + breached), or null. `configured` is false
  while no ticket has an SLA.
- `by_queue`, `by_owner`, `by_tag`, `by_priority` (SPEC 7): `{key: {tickets, share, open_now,
  first_response_p50, first_response_p90, resolution_p50, resolution_p90, reopen_rate}}`.
  `share` is of all tickets in the period (a ticket with two tags counts under both);
  `open_now` are in new, open, answered or postponed; unowned and untagged tickets are under
  `(none)`; the delays are seconds or null, `reopen_rate` 0..1 or null.
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from mailbridge.lifecycle import CONFIRMED, Kind, Status
from mailbridge.storage import repo
from mailbridge.views import iso

if TYPE_CHECKING:
    from mailbridge.storage import Store

STATUSES = tuple(s.value for s in Status)
ENDED = frozenset({Status.RESOLVED.value, Status.CLOSED.value})
SLA_BREACH = "sla-breach"  # the event kind the SLA sweep records
NOT_WAITING = frozenset({Status.SPAM.value, Status.DELETED.value})
PERCENTILES = (50, 90, 99)
DEFAULT_QUEUE = "support"
# upper bounds in seconds, and how a person reads them; the last bucket is open-ended
HISTOGRAM_BUCKETS: tuple[tuple[float, str], ...] = (
    (300, "< 5m"),
    (900, "5-15m"),
    (3600, "15m-1h"),
    (4 * 3600, "1-4h"),
    (86400, "4-24h"),
    (3 * 86400, "1-3d"),
    (7 * 86400, "3-7d"),
    (math.inf, "> 7d"),
)


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


def build_report(
    store: Store, now: datetime, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    with store.unit() as session:
        tickets = repo.all_tickets(session)
        events = repo.all_events(session)
        tags = repo.all_tags(session)
    return summarize(tickets, events, now, since, until, tags)


def queue_of(ticket: TicketRow) -> str:
    """The one place a ticket's queue is read (SPEC 7); rows without one are `support`'s."""
    return getattr(ticket, "queue", None) or DEFAULT_QUEUE


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
    by_ticket: dict[int, list[EventRow]] = defaultdict(list)
    for event in events:
        if event.ticket_number in numbers and event.at <= end:
            by_ticket[event.ticket_number].append(event)
    for history in by_ticket.values():
        history.sort(key=lambda e: e.at)
    live = [t for t in tickets if t.status not in NOT_WAITING]
    return {
        "generated_at": iso(now),
        "period": {"since": iso(since), "until": iso(until)},
        "tickets": {"total": len(tickets), "by_status": _by_status(tickets)},
        "first_response": _delays(tickets, live, by_ticket, FIRST_RESPONSE),
        "resolution": _delays(tickets, live, by_ticket, RESOLUTION),
        "reopen": _reopen(tickets, by_ticket),
        "time_in_status": _time_in_status(tickets, by_ticket, end),
        "mailboxes": _mailboxes(tickets),
        "created_per_day": _created_per_day(tickets, since, until),
        "queues": _queues(tickets, by_ticket),
        "transitions": _transitions(by_ticket),
        "closed_by": _closed_by(by_ticket),
        "sla": _sla(tickets, by_ticket),
        **_breakdowns(tickets, by_ticket, tags or {}),
    }


FIRST_RESPONSE = frozenset({Kind.AGENT_REPLY.value})
RESOLUTION = frozenset({Kind.RESOLVE.value, Kind.CLOSE.value})


# --- sections ------------------------------------------------------------------------------


def _by_status(tickets: Iterable[TicketRow]) -> dict[str, int]:
    counts = Counter(t.status for t in tickets)
    return {s: counts.get(s, 0) for s in [*STATUSES, *sorted(set(counts) - set(STATUSES))]}


def _delays(
    tickets: Sequence[TicketRow],
    live: Sequence[TicketRow],
    by_ticket: dict[int, list[EventRow]],
    kinds: frozenset[str],
) -> dict[str, Any]:
    """Seconds from creation to the first event of one of `kinds`, as a distribution."""
    delays = _delay_values(tickets, by_ticket, kinds)
    pending = sum(1 for t in live if t.number not in delays)
    return {"count": len(delays), "pending": pending, **distribution(list(delays.values()))}


def _delay_values(
    tickets: Sequence[TicketRow], by_ticket: dict[int, list[EventRow]], kinds: frozenset[str]
) -> dict[int, float]:
    delays: dict[int, float] = {}
    for t in tickets:
        first = next((e for e in by_ticket.get(t.number, ()) if e.kind in kinds), None)
        if first is not None:
            delays[t.number] = (first.at - t.created_at).total_seconds()
    return delays


def histogram(values: Iterable[float]) -> list[dict[str, Any]]:
    counts = Counter(next(label for bound, label in HISTOGRAM_BUCKETS if v < bound) for v in values)
    return [{"bucket": label, "count": counts.get(label, 0)} for _, label in HISTOGRAM_BUCKETS]


def _queues(tickets: Sequence[TicketRow], by_ticket: dict[int, list[EventRow]]) -> dict[str, Any]:
    groups: dict[str, list[TicketRow]] = defaultdict(list)
    for t in tickets:
        groups[queue_of(t)].append(t)
    out: dict[str, Any] = {}
    for name, group in sorted(groups.items()):
        live = [t for t in group if t.status not in NOT_WAITING]
        entry: dict[str, Any] = {"tickets": len(group), "by_status": _by_status(group)}
        for key, kinds in (("first_response", FIRST_RESPONSE), ("resolution", RESOLUTION)):
            values = _delay_values(group, by_ticket, kinds)
            entry[key] = _delays(group, live, by_ticket, kinds) | {
                "histogram": histogram(values.values())
            }
        out[name] = entry
    return out


def _created_per_day(
    tickets: Sequence[TicketRow], since: datetime | None, until: datetime | None
) -> dict[str, dict[str, int]]:
    days = [t.created_at.date() for t in tickets]
    first = since.date() if since else min(days, default=None)
    last = (until - timedelta(microseconds=1)).date() if until else max(days, default=None)
    if first is None or last is None:
        return {}
    queues = sorted({queue_of(t) for t in tickets}) or [DEFAULT_QUEUE]
    counts = Counter((t.created_at.date(), queue_of(t)) for t in tickets)
    out: dict[str, dict[str, int]] = {}
    day: date = first
    while day <= last:
        out[day.isoformat()] = {q: counts.get((day, q), 0) for q in queues}
        day += timedelta(days=1)
    return out


def _transitions(by_ticket: dict[int, list[EventRow]]) -> list[dict[str, Any]]:
    counts = Counter(
        (e.from_status, e.to_status)
        for history in by_ticket.values()
        for e in history
        if e.to_status and e.from_status != e.to_status
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return [{"from": a, "to": b, "count": n} for (a, b), n in ordered]


def _sla(tickets: Sequence[TicketRow], by_ticket: dict[int, list[EventRow]]) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for t in tickets:
        if not getattr(t, "sla_name", None):
            continue
        missed = any(e.kind == SLA_BREACH for e in by_ticket.get(t.number, []))
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


def _closed_by(by_ticket: dict[int, list[EventRow]]) -> dict[str, int]:
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


def _reopen(
    tickets: Sequence[TicketRow],
    by_ticket: dict[int, list[EventRow]],
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


def _time_in_status(
    tickets: Sequence[TicketRow], by_ticket: dict[int, list[EventRow]], now: datetime
) -> dict[str, Any]:
    totals: dict[str, float] = defaultdict(float)
    visitors: dict[str, set[int]] = defaultdict(set)
    for t in tickets:
        for status, seconds in _spans(t, by_ticket.get(t.number, []), now):
            totals[status] += seconds
            visitors[status].add(t.number)
    out: dict[str, Any] = {}
    for status in [*STATUSES, *sorted(set(totals) - set(STATUSES))]:
        n = len(visitors.get(status, ()))
        total = totals.get(status, 0.0)
        out[status] = {
            "tickets": n,
            "total_seconds": _seconds(total),
            "mean_seconds": _seconds(total / n) if n else None,
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


OPEN_NOW = frozenset({"new", "open", "answered", "postponed"})
PRIORITY_ORDER = ("urgent", "high", "normal", "low")
NONE_KEY = "(none)"


def _breakdowns(
    tickets: Sequence[TicketRow],
    by_ticket: dict[int, list[EventRow]],
    tags: Mapping[int, Sequence[str]],
) -> dict[str, Any]:
    """by_queue, by_owner, by_tag, by_priority: which kinds of ticket come often, which are hard."""
    followed_up = {t.follow_up_of for t in tickets if t.follow_up_of is not None}
    keys: dict[str, Callable[[TicketRow], Sequence[str]]] = {
        "by_queue": lambda t: [queue_of(t)],
        "by_owner": lambda t: [getattr(t, "owner", None) or NONE_KEY],
        "by_tag": lambda t: list(tags.get(t.number, ())) or [NONE_KEY],
        "by_priority": lambda t: [getattr(t, "priority", None) or "normal"],
    }
    out: dict[str, Any] = {}
    for section, key_of in keys.items():
        groups: dict[str, list[TicketRow]] = defaultdict(list)
        for t in tickets:
            for key in key_of(t):
                groups[key].append(t)
        if section == "by_priority":
            order = [p for p in PRIORITY_ORDER if p in groups] + sorted(
                set(groups) - set(PRIORITY_ORDER)
            )
        else:
            order = sorted(groups, key=lambda k: (k == NONE_KEY, k))
        out[section] = {
            key: _breakdown_row(groups[key], len(tickets), by_ticket, followed_up) for key in order
        }
    return out


def _breakdown_row(
    group: Sequence[TicketRow],
    total: int,
    by_ticket: dict[int, list[EventRow]],
    followed_up: set[int],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tickets": len(group),
        "share": round(len(group) / total, 4) if total else 0.0,
        "open_now": sum(1 for t in group if t.status in OPEN_NOW),
    }
    for key, kinds in (("first_response", FIRST_RESPONSE), ("resolution", RESOLUTION)):
        stats = distribution(list(_delay_values(group, by_ticket, kinds).values()))
        row[f"{key}_p50"], row[f"{key}_p90"] = stats["p50"], stats["p90"]
    row["reopen_rate"] = _reopen(group, by_ticket, followed_up)["rate"]
    return row


def _mailboxes(tickets: Iterable[TicketRow]) -> dict[str, Any]:
    groups: dict[str, list[TicketRow]] = defaultdict(list)
    for t in tickets:
        groups[t.mailbox or "(unknown)"].append(t)
    return {
        name: {"tickets": len(group), "by_status": _by_status(group)}
        for name, group in sorted(groups.items())
    }


# --- statistics ----------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    position = (len(ordered) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    ordered = sorted(values)
    stats: dict[str, float | None] = {"mean": _seconds(sum(ordered) / len(ordered))}
    return stats | {f"p{p}": _seconds(percentile(ordered, p)) for p in PERCENTILES}


def _seconds(value: float) -> float:
    return round(value, 3)


# --- human rendering -----------------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    """`45s`, `12m 30s`, `2h 05m`, `3d 04h`: two units are enough to compare at a glance."""
    if seconds is None:
        return "-"
    s = round(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


BY = ("queue", "owner", "tag", "priority")


def render(report: dict[str, Any], width: int = 100, by: Sequence[str] = BY) -> str:
    """The report as readable tables (rich), for a terminal or a mail to the team; `by` picks
    the breakdowns shown (all four by default)."""
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    for table in (
        _status_table(report),
        _delay_table(report),
        _time_table(report),
        _mailbox_table(report),
        *(_breakdown_table(report, name) for name in by if f"by_{name}" in report),
    ):
        console.print(table)
        console.print()
    reopen = report["reopen"]
    rate = "-" if reopen["rate"] is None else f"{reopen['rate']:.1%}"
    console.print(
        f"Reopen rate: {rate} ({reopen['reopened']} of {reopen['resolved']} resolved tickets came back)"
    )
    console.print(f"As of {report['generated_at']}")
    return out.getvalue()


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _status_table(report: dict[str, Any]) -> Any:
    table = _table(f"Tickets ({report['tickets']['total']})", "status", "tickets")
    for status, n in report["tickets"]["by_status"].items():
        table.add_row(status, str(n))
    return table


def _delay_table(report: dict[str, Any]) -> Any:
    table = _table("Response times", "", "tickets", "pending", "p50", "p90", "p99", "mean")
    for label, key in (("first response", "first_response"), ("resolution", "resolution")):
        d = report[key]
        table.add_row(
            label,
            str(d["count"]),
            str(d["pending"]),
            *(human_duration(d[k]) for k in ("p50", "p90", "p99", "mean")),
        )
    return table


def _time_table(report: dict[str, Any]) -> Any:
    table = _table("Time in each status", "status", "tickets", "total", "mean per ticket")
    for status, d in report["time_in_status"].items():
        if d["tickets"]:
            table.add_row(
                status,
                str(d["tickets"]),
                human_duration(d["total_seconds"]),
                human_duration(d["mean_seconds"]),
            )
    return table


_BREAKDOWN_DELAYS = ("first_response_p50", "first_response_p90", "resolution_p50", "resolution_p90")


def _breakdown_table(report: dict[str, Any], name: str) -> Any:
    columns = ("tickets", "share", "open now", "1st resp p50", "p90", "resolved p50", "p90")
    table = _table(f"By {name}", name, *columns, "reopened")
    for key, d in report[f"by_{name}"].items():
        rate = "-" if d["reopen_rate"] is None else f"{d['reopen_rate']:.0%}"
        delays = [human_duration(d[k]) for k in _BREAKDOWN_DELAYS]
        table.add_row(
            key, str(d["tickets"]), f"{d['share']:.0%}", str(d["open_now"]), *delays, rate
        )
    return table


def _mailbox_table(report: dict[str, Any]) -> Any:
    mailboxes = report["mailboxes"]
    used = [s for s in report["tickets"]["by_status"] if report["tickets"]["by_status"][s]]
    table = _table("Per mailbox", "mailbox", "tickets", *used)
    for name, d in mailboxes.items():
        table.add_row(name, str(d["tickets"]), *(str(d["by_status"].get(s, 0)) for s in used))
    return table
