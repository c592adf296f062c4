"""SLA due times from a ticket's history: business hours, the clock paused while answered or
postponed, met and breached targets (the pure part of SPEC 8)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mailbridge.business_time import make_calendar
from mailbridge.sla import HistoryEvent, Policy, compute, describe

BUC = ZoneInfo("Europe/Bucharest")
OFFICE = make_calendar("office", "Europe/Bucharest", holidays=["2026-12-25"])
H = timedelta(hours=1)
POLICY = Policy("standard", OFFICE, first_response=4 * H, next_response=8 * H, resolution=24 * H)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BUC)


def ev(at: datetime, kind: str, to: str | None) -> HistoryEvent:
    return HistoryEvent(at, kind, to)


def test_new_ticket_dues_in_business_hours() -> None:
    created = local(2026, 11, 6, 15)  # a Friday afternoon
    clock = compute(POLICY, created, [])
    assert clock.target("first_response").due == local(2026, 11, 9, 11)  # 2h Fri + 2h Mon
    assert clock.target("resolution").due == local(2026, 11, 11, 15)  # 3 working days
    assert clock.target("next_response") is None  # nothing to answer again yet
    assert clock.breaches(local(2026, 11, 9, 11)) == {}
    assert clock.breaches(local(2026, 11, 9, 11, 1)) == {"first_response": timedelta(minutes=1)}


def test_first_response_met_in_time() -> None:
    created = local(2026, 11, 2, 10)
    clock = compute(POLICY, created, [ev(local(2026, 11, 2, 13), "agent-reply", "answered")])
    first = clock.target("first_response")
    assert first.met_at == local(2026, 11, 2, 13) and first.breached(local(2026, 11, 20)) is None


def test_first_response_late_is_breached_by_how_much() -> None:
    created = local(2026, 11, 2, 10)
    clock = compute(POLICY, created, [ev(local(2026, 11, 2, 16), "agent-reply", "answered")])
    assert clock.breaches(local(2026, 11, 20)) == {"first_response": 2 * H}
    assert describe(2 * H + timedelta(minutes=5)) == "2h 5m"


def test_clock_paused_while_answered() -> None:
    # created Mon 10:00; answered 11:00 (1h used); the customer writes Wed 10:00 (open again)
    created = local(2026, 11, 2, 10)
    history = [
        ev(local(2026, 11, 2, 11), "agent-reply", "answered"),
        ev(local(2026, 11, 4, 10), "customer-mail", "open"),
    ]
    clock = compute(POLICY, created, history)
    # resolution: 24 working hours, 1h used before the pause, 23h from Wed 10:00:
    # Wed 7h, Thu 8h, Fri 8h -> Fri 17:00
    assert clock.target("resolution").due == local(2026, 11, 6, 17)
    # next response: 8 working hours from Wed 10:00 -> Thu 10:00
    assert clock.target("next_response").due == local(2026, 11, 5, 10)


def test_no_due_while_the_clock_is_paused() -> None:
    created = local(2026, 11, 2, 10)
    history = [ev(local(2026, 11, 2, 11), "postpone", "postponed")]
    clock = compute(POLICY, created, history)
    assert clock.target("first_response").due is None  # waiting on the customer
    assert clock.breaches(local(2027, 1, 1)) == {}
    assert clock.next_due(local(2027, 1, 1), []) is None


def test_resolution_after_its_due_time_is_breached() -> None:
    created = local(2026, 12, 24, 9)  # Thursday before the Christmas holiday
    history = [ev(local(2026, 12, 29, 12), "resolve", "resolved")]
    clock = compute(POLICY, created, history)
    # 24 working hours: Thu 24 (8h), Mon 28 (8h), Tue 29 (8h) -> due Tue 29 17:00
    assert clock.target("resolution").due == local(2026, 12, 29, 17)
    assert clock.breaches(local(2027, 1, 10)).get("resolution") is None
    late = compute(POLICY, created, [ev(local(2026, 12, 30, 10), "resolve", "resolved")])
    # by wall-clock time: Tue 17:00 -> Wed 10:00
    assert late.breaches(local(2027, 1, 10))["resolution"] == 17 * H


def test_next_due_skips_recorded_and_met_targets() -> None:
    created = local(2026, 11, 2, 10)
    clock = compute(POLICY, created, [])
    assert clock.next_due(created, []) == local(2026, 11, 2, 14)
    assert clock.next_due(created, ["first_response"]) == local(2026, 11, 5, 10)


def test_around_the_clock_without_calendar() -> None:
    policy = Policy("always", None, first_response=4 * H)
    created = local(2026, 11, 7, 22)  # a Saturday night
    assert compute(policy, created, []).target("first_response").due == local(2026, 11, 8, 2)
