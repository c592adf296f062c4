"""`mailbridge report`: numbers on a known history built with a set clock, the pure statistics,
the human tables and the `report --json` command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from mailbridge.cli import cli
from mailbridge.envelope import Envelope, Source
from mailbridge.report import build_report, human_duration, percentile, render, summarize
from tests.mail import make_mail, message_id_of

SUPPORT = Source("imap", "support", live=False)
SALES = Source("imap", "sales", live=False)
HOUR = 3600.0


def customer(
    app: Any, subject: str, source: Source = SUPPORT, reply_to: bytes | None = None
) -> tuple[int, bytes]:
    raw = make_mail(subject=subject, in_reply_to=message_id_of(reply_to) if reply_to else None)
    return app.ingestor.accept(raw, Envelope(), source).ticket, raw


def agent_reply(app: Any, to: bytes) -> None:
    raw = make_mail(
        sender="alice@example.com",
        subject="Re",
        body="Try turning it off.\n",
        in_reply_to=message_id_of(to),
    )
    app.ingestor.accept(raw, Envelope(auth_user="alice"), SUPPORT)


@pytest.fixture
def history(sqlite_app: Any, clock: Any) -> Any:
    """t0 #1 created; +1h #2 created; +2h agent answers #1; +5h #1 resolved, agent answers #2;
    +6h the customer reopens #1; +7h #3 created (sales); report at +8h."""
    app = sqlite_app
    t1, raw1 = customer(app, "Printer on fire")
    clock.advance(hours=1)
    _, raw2 = customer(app, "Toner low")
    clock.advance(hours=1)
    agent_reply(app, raw1)
    clock.advance(hours=3)
    app.actions.act(t1, "resolve", "cli:test")
    agent_reply(app, raw2)
    clock.advance(hours=1)
    customer(app, "Re: Printer on fire", reply_to=raw1)
    clock.advance(hours=1)
    customer(app, "Quote please", SALES)
    clock.advance(hours=1)
    return app


def test_report_numbers_on_a_known_history(history: Any, clock: Any) -> None:
    report = build_report(history.store, clock.now)
    assert report["generated_at"] == "2026-11-02T17:00:00Z"
    assert report["tickets"] == {
        "total": 3,
        "by_status": {
            "new": 1,
            "open": 1,
            "answered": 1,
            "resolved": 0,
            "closed": 0,
            "postponed": 0,
            "spam": 0,
            "deleted": 0,
        },
    }
    assert report["first_response"] == {
        "count": 2,
        "pending": 1,
        "mean": 3 * HOUR,
        "p50": 3 * HOUR,
        "p90": 13680.0,
        "p99": 14328.0,
    }
    assert report["first_response"]["p50"] == 10800  # 2h and 4h
    assert report["resolution"] == {
        "count": 1,
        "pending": 2,
        "mean": 5 * HOUR,
        "p50": 5 * HOUR,
        "p90": 5 * HOUR,
        "p99": 5 * HOUR,
    }
    assert report["reopen"] == {"resolved": 1, "reopened": 1, "rate": 1.0}
    spent = report["time_in_status"]
    assert spent["new"] == {"tickets": 3, "total_seconds": 7 * HOUR, "mean_seconds": 7 * HOUR / 3}
    assert spent["answered"] == {"tickets": 2, "total_seconds": 6 * HOUR, "mean_seconds": 3 * HOUR}
    assert spent["resolved"] == {"tickets": 1, "total_seconds": HOUR, "mean_seconds": HOUR}
    assert spent["open"] == {"tickets": 1, "total_seconds": 2 * HOUR, "mean_seconds": 2 * HOUR}
    assert spent["closed"] == {"tickets": 0, "total_seconds": 0.0, "mean_seconds": None}
    assert list(spent) == [
        "new",
        "open",
        "answered",
        "resolved",
        "closed",
        "postponed",
        "spam",
        "deleted",
    ]
    assert {name: m["tickets"] for name, m in report["mailboxes"].items()} == {
        "sales": 1,
        "support": 2,
    }
    assert report["mailboxes"]["support"]["by_status"]["open"] == 1


def test_report_json_is_deterministic(history: Any, clock: Any) -> None:
    first = json.dumps(build_report(history.store, clock.now))
    assert json.dumps(build_report(history.store, clock.now)) == first


def test_report_command(history: Any, tmp_path: Path) -> None:
    config = tmp_path / "mailbridge.toml"  # written by the make_settings fixture for this database
    result = CliRunner().invoke(
        cli, ["--config", str(config), "report", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["first_response"]["p50"] == 7200 + 3600
    assert data["resolution"]["p50"] == 18000
    assert data["reopen"]["rate"] == 1.0

    human = CliRunner().invoke(cli, ["--config", str(config), "report"], catch_exceptions=False)
    assert human.exit_code == 0, human.output
    assert "first response" in human.stdout and "3h 00m" in human.stdout
    assert "Reopen rate: 100.0% (1 of 1 resolved tickets came back)" in human.stdout


def test_empty_database(sqlite_app: Any, clock: Any) -> None:
    report = build_report(sqlite_app.store, clock.now)
    assert report["tickets"]["total"] == 0
    assert report["first_response"] == {
        "count": 0,
        "pending": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
    }
    assert report["reopen"]["rate"] is None
    assert "Tickets (0)" in render(report)


# --- pure parts -----------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(number: int, status: str, follow_up_of: int | None = None, mailbox: str = "") -> Any:
    return SimpleNamespace(
        number=number, status=status, mailbox=mailbox, created_at=T0, follow_up_of=follow_up_of
    )


def ev(number: int, hours: float, kind: str, before: str | None, after: str | None) -> Any:
    return SimpleNamespace(
        ticket_number=number,
        at=T0 + timedelta(hours=hours),
        kind=kind,
        from_status=before,
        to_status=after,
    )


def test_a_follow_up_of_a_closed_ticket_counts_as_reopened() -> None:
    tickets = [row(1, "closed"), row(2, "new", follow_up_of=1), row(3, "closed")]
    events = [
        ev(1, 0, "created", None, "new"),
        ev(1, 1, "close", "new", "closed"),
        ev(2, 2, "created", None, "new"),
        ev(3, 0, "created", None, "new"),
        ev(3, 1, "close", "new", "closed"),
    ]
    report = summarize(tickets, events, T0 + timedelta(hours=3))
    assert report["reopen"] == {"resolved": 2, "reopened": 1, "rate": 0.5}
    assert report["mailboxes"] == {
        "(unknown)": {"tickets": 3, "by_status": report["tickets"]["by_status"]}
    }


def test_spam_is_not_waiting_for_a_response() -> None:
    report = summarize(
        [row(1, "spam"), row(2, "open")],
        [ev(1, 0, "created", None, "new"), ev(1, 1, "spam", "new", "spam")],
        T0,
    )
    assert report["first_response"]["pending"] == 1


def test_events_without_a_status_do_not_end_a_stretch() -> None:
    events = [
        ev(1, 0, "created", None, "new"),
        ev(1, 1, "unauthenticated-agent", None, None),
        ev(1, 2, "agent-reply", "new", "answered"),
    ]
    spent = summarize([row(1, "answered")], events, T0 + timedelta(hours=3))["time_in_status"]
    assert (spent["new"]["total_seconds"], spent["answered"]["total_seconds"]) == (2 * HOUR, HOUR)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
        ([0.0, 10.0], 0, 0.0),
        ([0.0, 10.0], 100, 10.0),
    ],
)
def test_percentile_interpolates_between_ranks(
    values: list[float], p: float, expected: float
) -> None:
    assert percentile(values, p) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (45, "45s"), (750, "12m 30s"), (7500, "2h 05m"), (273600, "3d 04h")],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text
