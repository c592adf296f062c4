"""SLA due times from a ticket's history (SPEC 8).

PURE: given the ticket's creation time, its events (time, kind, new status) and the targets, it
returns each target's due time and whether it was met or breached. The clock runs in business
time (`business_time`) and is paused while the ticket is `answered` or `postponed`: only spans in
a running status count toward a target. The stored due columns and `ticket show` both come from
here, so the sweep that records breaches and the CLI never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailbridge.business_time import Calendar, add_business, business_between
from mailbridge.lifecycle import Kind, Status

PAUSED = frozenset({Status.ANSWERED.value, Status.POSTPONED.value})
# a target ends when it is met; a ticket that left normal life has nothing left to meet
STOPPED = frozenset({Status.RESOLVED.value, Status.CLOSED.value, "spam", "deleted"})
TARGETS = ("first_response", "next_response", "resolution")


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    at: datetime
    kind: str
    to_status: str | None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    calendar: Calendar | None
    first_response: timedelta | None = None
    next_response: timedelta | None = None
    resolution: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # first_response | next_response | resolution
    due: datetime | None  # None: the clock is paused (or stopped) before the target ran out
    met_at: datetime | None  # when it was met, if it was
    start: datetime | None = None  # next_response: the customer mail it answers

    @property
    def key(self) -> str:
        """How a recorded breach names this target: each next-response wait is its own."""
        if self.name == "next_response" and self.start is not None:
            return f"{self.name}@{int(self.start.timestamp())}"
        return self.name

    def breached(self, now: datetime) -> timedelta | None:
        """By how much the target was missed as of `now`, or None if it was not (yet)."""
        if self.due is None:
            return None
        end = self.met_at if self.met_at is not None else now
        return end - self.due if end > self.due else None


@dataclass(frozen=True, slots=True)
class Clock:
    targets: tuple[Target, ...]

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def breaches(self, now: datetime) -> dict[str, timedelta]:
        return {t.name: by for t in self.targets if (by := t.breached(now)) is not None}

    def missed(self, now: datetime) -> list[tuple[Target, timedelta]]:
        return [(t, by) for t in self.targets if (by := t.breached(now)) is not None]

    def next_due(self, now: datetime, recorded: Sequence[str]) -> datetime | None:
        """The earliest due time still to watch: not met, not already recorded as breached
        (`recorded` holds target keys)."""
        dues = [
            t.due
            for t in self.targets
            if t.due is not None and t.met_at is None and t.key not in recorded
        ]
        return min(dues) if dues else None


def _spans(created: datetime, history: Sequence[HistoryEvent]) -> list[tuple[datetime, str]]:
    """(start, status) of each status span in time order; the last one is still going."""
    spans = [(created, Status.NEW.value)]
    for e in sorted(history, key=lambda e: e.at):
        if e.to_status and e.to_status != spans[-1][1]:
            spans.append((e.at, e.to_status))
    return spans


def _due(
    spans: list[tuple[datetime, str]],
    start: datetime,
    target: timedelta,
    calendar: Calendar | None,
) -> datetime | None:
    """When `target` of running (unpaused) business time after `start` is used up."""
    left = target
    for i, (begin, status) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else None
        if end is not None and end <= start:
            continue
        if status in PAUSED:
            continue
        if status in STOPPED and end is None:
            return None
        begin = max(begin, start)
        if end is None:
            return add_business(begin, left, calendar)
        used = business_between(begin, end, calendar)
        if used >= left:
            return add_business(begin, left, calendar)
        left -= used
    return None


def compute(policy: Policy, created: datetime, history: Sequence[HistoryEvent]) -> Clock:
    ordered = sorted(history, key=lambda e: e.at)
    spans = _spans(created, ordered)
    replies = [e.at for e in ordered if e.kind == Kind.AGENT_REPLY.value]
    targets: list[Target] = []

    if policy.first_response is not None:
        met = replies[0] if replies else None
        targets.append(
            Target(
                "first_response",
                _due(spans, created, policy.first_response, policy.calendar),
                met,
            )
        )

    if policy.next_response is not None and replies:
        # the oldest customer mail not yet answered, after the first agent reply
        waiting = None
        for e in ordered:
            if e.at <= replies[0]:
                continue
            if e.kind == Kind.CUSTOMER_MAIL.value and waiting is None:
                waiting = e.at
            elif e.kind == Kind.AGENT_REPLY.value:
                waiting = None
        if waiting is not None:
            due = _due(spans, waiting, policy.next_response, policy.calendar)
            targets.append(Target("next_response", due, None, waiting))
        else:
            # the last customer mail was answered: met (or never due); nothing to watch
            targets.append(Target("next_response", None, None))

    if policy.resolution is not None:
        ended = next(
            (e.at for e in ordered if e.to_status in (Status.RESOLVED, Status.CLOSED)), None
        )
        if ended is not None:
            # the clock as it ran up to the resolution, kept running past it, says where the due
            # time was: before the resolution it was breached, after it met
            until = [s for s in spans if s[0] < ended] + [(ended, Status.OPEN.value)]
            due = _due(until, created, policy.resolution, policy.calendar)
            targets.append(Target("resolution", due, ended))
        else:
            due = _due(spans, created, policy.resolution, policy.calendar)
            targets.append(Target("resolution", due, None))
    return Clock(tuple(targets))


def describe(by: timedelta) -> str:
    """`2h 5m`: how far past its due time a target was."""
    minutes = int(by.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{mins}m"] * bool(mins)
    return " ".join(parts) or f"{int(by.total_seconds())}s"
