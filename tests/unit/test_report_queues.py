"""The report's JSON keys behind the charts: queues, days, transitions, the period, SLA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from mailbridge.report import histogram, summarize

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


def ticket(number: int, status: str, created: datetime, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(
        number=number,
        status=status,
        mailbox="support",
        created_at=created,
        follow_up_of=None,
        **extra,
    )


def event(number: int, at: datetime, kind: str, before: str | None, after: str) -> SimpleNamespace:
    return SimpleNamespace(
        ticket_number=number, at=at, kind=kind, from_status=before, to_status=after
    )


TICKETS = [
    ticket(1, "resolved", T0),
    ticket(2, "answered", T0 + 2 * timedelta(days=1)),
    ticket(3, "new", T0 + 2 * timedelta(days=1) + H),
]
EVENTS = [
    event(1, T0, "created", None, "new"),
    event(1, T0 + 0.5 * H, "agent-reply", "new", "answered"),
    event(1, T0 + 3 * H, "customer-mail", "answered", "open"),
    event(1, T0 + 4 * H, "agent-reply", "open", "answered"),
    event(1, T0 + 30 * H, "resolve", "answered", "resolved"),
    event(2, T0 + timedelta(days=2), "created", None, "new"),
    event(2, T0 + timedelta(days=2) + 2 * H, "agent-reply", "new", "answered"),
    event(3, T0 + timedelta(days=2) + H, "created", None, "new"),
]
NOW = T0 + timedelta(days=3)


def test_every_ticket_is_in_the_support_queue_until_queues_exist() -> None:
    report = summarize(TICKETS, EVENTS, NOW)
    (name,) = report["queues"]
    assert name == "support"
    queue = report["queues"]["support"]
    assert queue["tickets"] == 3
    assert queue["first_response"]["count"] == 2
    assert queue["first_response"]["pending"] == 1  # ticket 3 waits
    assert queue["first_response"]["p50"] == report["first_response"]["p50"]
    counts = {b["bucket"]: b["count"] for b in queue["first_response"]["histogram"]}
    assert counts["15m-1h"] == 1 and counts["1-4h"] == 1 and sum(counts.values()) == 2
    assert {b["bucket"]: b["count"] for b in queue["resolution"]["histogram"]}["1-3d"] == 1


def test_a_queue_field_on_tickets_splits_the_charts() -> None:
    tickets = [
        ticket(1, "resolved", T0, queue="billing"),
        *TICKETS[1:],
    ]
    report = summarize(tickets, EVENTS, NOW)
    assert sorted(report["queues"]) == ["billing", "support"]
    assert report["created_per_day"]["2026-11-02"] == {"billing": 1, "support": 0}


def test_days_without_tickets_are_listed_at_zero() -> None:
    days = summarize(TICKETS, EVENTS, NOW)["created_per_day"]
    assert days == {
        "2026-11-02": {"support": 1},
        "2026-11-03": {"support": 0},
        "2026-11-04": {"support": 2},
    }


def test_transitions_count_each_status_change() -> None:
    flow = summarize(TICKETS, EVENTS, NOW)["transitions"]
    assert flow == [
        {"from": None, "to": "new", "count": 3},
        {"from": "new", "to": "answered", "count": 2},
        {"from": "answered", "to": "open", "count": 1},
        {"from": "answered", "to": "resolved", "count": 1},
        {"from": "open", "to": "answered", "count": 1},
    ]


def test_the_period_bounds_tickets_and_ends_open_spans() -> None:
    since, until = T0 + timedelta(days=1), T0 + timedelta(days=2, hours=1, minutes=30)
    report = summarize(TICKETS, EVENTS, NOW, since, until)
    assert report["tickets"]["total"] == 2  # tickets 2 and 3
    assert report["period"] == {"since": "2026-11-03T09:00:00Z", "until": "2026-11-04T10:30:00Z"}
    # both are still new at the period's end (ticket 2 was answered later): 1.5h + 0.5h
    assert report["time_in_status"]["answered"]["tickets"] == 0
    assert report["time_in_status"]["new"]["total_seconds"] == 2 * 3600


def test_sla_says_it_is_not_configured() -> None:
    assert summarize(TICKETS, EVENTS, NOW)["sla"] == {
        "configured": False,
        "met": 0,
        "breached": 0,
        "rate": None,
        "queues": {},
    }


def test_histogram_buckets_are_upper_bounds() -> None:
    counts = {b["bucket"]: b["count"] for b in histogram([0, 299.9, 300, 8 * 86400])}
    assert counts["< 5m"] == 2 and counts["5-15m"] == 1 and counts["> 7d"] == 1
