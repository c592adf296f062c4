"""`by_queue`, `by_owner`, `by_tag`, `by_priority` (SPEC 7): which kinds of ticket come often,
which are hard."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mailbridge.lifecycle import Status
from mailbridge.report.sections import (
    FIRST_RESPONSE,
    RESOLUTION,
    History,
    TicketRow,
    delay_values,
    queue_of,
    reopen,
)
from mailbridge.report.stats import distribution

OPEN_NOW = frozenset(
    {Status.NEW.value, Status.OPEN.value, Status.ANSWERED.value, Status.POSTPONED.value}
)
PRIORITY_ORDER = ("urgent", "high", "normal", "low")
NONE_KEY = "(none)"


def breakdowns(
    tickets: Sequence[TicketRow], by_ticket: History, tags: Mapping[int, Sequence[str]]
) -> dict[str, Any]:
    """The four sections, each `{key: row}`: unowned and untagged tickets under `(none)`, last."""
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
            key: _row(groups[key], len(tickets), by_ticket, followed_up) for key in order
        }
    return out


def _row(
    group: Sequence[TicketRow], total: int, by_ticket: History, followed_up: set[int]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tickets": len(group),
        "share": round(len(group) / total, 4) if total else 0.0,
        "open_now": sum(1 for t in group if t.status in OPEN_NOW),
    }
    for key, kinds in (("first_response", FIRST_RESPONSE), ("resolution", RESOLUTION)):
        stats = distribution(list(delay_values(group, by_ticket, kinds).values()))
        row[f"{key}_p50"], row[f"{key}_p90"] = stats["p50"], stats["p90"]
    row["reopen_rate"] = reopen(group, by_ticket, followed_up)["rate"]
    return row
