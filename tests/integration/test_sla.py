"""SLA targets in business hours, end to end with a set clock on SQLite and PostgreSQL: due times
stored on the ticket, a breach recorded once (event, notice to the agents, metric), the clock
paused while answered, `--dry-run` writing nothing, concurrent runs, `ticket show`, `tickets
--breached` and `report --json`."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mailbridge.cli import cli
from mailbridge.envelope import Envelope, Source
from mailbridge.metrics import Metrics
from mailbridge.report.html import render_html
from mailbridge.storage import repo
from mailbridge.sweeps import Sweeps
from tests.mail import make_mail, message_id_of

FILE = Source("file", "test", live=False)
MINUTE = timedelta(minutes=1)

# the clock fixture starts on Monday 2026-11-02 09:00 UTC = 11:00 in Bucharest
SLA = """
[[calendars]]
name = "office"
timezone = "Europe/Bucharest"
days = ["mon", "tue", "wed", "thu", "fri"]
hours = "09:00-17:00"
holidays = ["2026-11-04"]

[[sla]]
name = "standard"
calendar = "office"
first_response = "4h"
next_response = "8h"
resolution = "16h"
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sla_app(make_app: Any, url: str) -> Any:
    return make_app(url, SLA)


def run(app: Any, at: datetime, dry_run: bool = False, metrics: Any = None) -> list[Any]:
    on_breach = metrics.sla_breach if metrics else None
    sweeps = Sweeps(app.store, app.settings, app.clock, app.outbound, on_breach=on_breach)
    return sweeps.run(at, dry_run=dry_run)


def new_ticket(app: Any) -> tuple[int, bytes]:
    raw = make_mail(subject="Invoice wrong")
    return app.ingestor.accept(raw, Envelope(), FILE).ticket, raw


def agent_reply(app: Any, raw: bytes) -> None:
    reply = make_mail(
        sender="alice@example.com",
        subject="Re: x",
        body="Looking.\n",
        in_reply_to=message_id_of(raw),
    )
    app.ingestor.accept(reply, Envelope(auth_user="alice"), FILE)


def customer_reply(app: Any, raw: bytes) -> None:
    app.ingestor.accept(
        make_mail(subject="Re: Invoice wrong", body="Still wrong", in_reply_to=message_id_of(raw)),
        Envelope(),
        FILE,
    )


def breaches(app: Any, number: int) -> list[tuple[str, str, str]]:
    with app.store.unit() as s:
        return [
            (e.kind, e.actor, e.detail)
            for e in repo.ticket_events(s, number)
            if e.kind == "sla-breach"
        ]


def notices(app: Any) -> list[tuple[str, str]]:
    with app.store.unit() as s:
        return [
            (m.to_addrs, m.subject)
            for n, _ in repo.list_tickets(s)
            for m in repo.ticket_messages(s, n.number)
            if m.verdict.startswith("sla breach")
        ]


def columns(app: Any, number: int) -> tuple[Any, ...]:
    with app.store.unit() as s:
        t = repo.get_ticket(s, number)
        return (t.sla_name, t.first_response_due, t.resolution_due, t.sla_due, t.sla_breached)


def test_due_times_are_stored_in_business_hours(make_app: Any, db_url: str, clock: Any) -> None:
    app = sla_app(make_app, db_url)
    number, _ = new_ticket(app)
    run(app, clock.now)
    # 4 working hours from Mon 11:00 local: 15:00 local = 13:00 UTC; resolution 16h: Mon 6h,
    # Wed 4 Nov is a holiday, Tue 8h, Thu 2h -> Thu 11:00 local = 09:00 UTC
    assert columns(app, number) == (
        "standard",
        utc(2026, 11, 2, 13),
        utc(2026, 11, 5, 9),
        utc(2026, 11, 2, 13),
        None,
    )


def test_breach_is_recorded_once_with_notice_and_metric(
    make_app: Any, db_url: str, clock: Any
) -> None:
    app = sla_app(make_app, db_url)
    metrics = Metrics(app.store, None)
    number, _ = new_ticket(app)
    run(app, clock.now)
    assert run(app, utc(2026, 11, 2, 13), metrics=metrics) == []  # due exactly now: not yet missed
    assert breaches(app, number) == []

    changes = run(app, utc(2026, 11, 2, 13) + 5 * MINUTE, metrics=metrics)
    assert [c.describe() for c in changes] == [
        f"#{number} sla_breach: first_response by 5m (sla standard)"
    ]
    assert breaches(app, number) == [("sla-breach", "sla:standard", "first_response by 5m")]
    assert notices(app) == [("team@example.com", f"SLA breach on [#{number}]: first_response")]
    # again, later, and once more: nothing new
    assert run(app, utc(2026, 11, 2, 14), metrics=metrics) == []
    assert run(app, utc(2026, 11, 2, 15), metrics=metrics) == []
    assert len(breaches(app, number)) == 1 and len(notices(app)) == 1
    text = metrics.exposition().decode()
    assert 'mailbridge_sla_breaches_total{queue="support",target="first_response"} 1.0' in text
    assert columns(app, number)[3:] == (utc(2026, 11, 5, 9), "first_response")


def test_answered_in_time_and_clock_paused_while_answered(
    make_app: Any, db_url: str, clock: Any
) -> None:
    app = sla_app(make_app, db_url)
    number, raw = new_ticket(app)
    clock.now = utc(2026, 11, 2, 12)  # 14:00 local: 3 working hours used
    agent_reply(app, raw)
    run(app, clock.now)
    # answered: the resolution clock stands still, nothing is due
    assert columns(app, number)[3] is None
    assert run(app, utc(2026, 11, 20)) == []
    assert breaches(app, number) == []
    # the customer writes Mon 9 Nov 09:00 local (07:00 UTC): the clock runs again with 13h left
    # (Mon 8h, Tue 5h -> Tue 10 Nov 14:00 local); next response 8h -> Mon 17:00 local
    clock.now = utc(2026, 11, 9, 7)
    customer_reply(app, raw)
    run(app, clock.now)
    with app.store.unit() as s:
        t = repo.get_ticket(s, number)
        assert t.resolution_due == utc(2026, 11, 10, 12)
        assert t.next_response_due == utc(2026, 11, 9, 15)
        assert t.sla_due == utc(2026, 11, 9, 15)


def test_dry_run_lists_breaches_and_writes_nothing(
    make_app: Any, db_url: str, clock: Any, tmp_path: Path
) -> None:
    app = sla_app(make_app, db_url)
    number, _ = new_ticket(app)
    before = columns(app, number)
    late = utc(2026, 11, 2, 14)
    changes = run(app, late, dry_run=True)
    assert [(c.number, c.action, c.detail) for c in changes] == [
        (number, "sla_breach", "first_response by 1h")
    ]
    assert columns(app, number) == before and breaches(app, number) == [] and notices(app) == []
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(tmp_path / "mailbridge.toml"),
            "rules",
            "run",
            "--dry-run",
            "--json",
            "--at",
            late.isoformat(),
        ],
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["action"], row["detail"]) == ("sla_breach", "first_response by 1h")
    assert breaches(app, number) == []


def test_two_threads_record_one_breach(make_app: Any, db_url: str, clock: Any) -> None:
    first = sla_app(make_app, db_url)
    second = make_app(db_url, SLA)  # its own engine: a second node on PostgreSQL
    numbers = [new_ticket(first)[0] for _ in range(5)]
    late = utc(2026, 11, 2, 14)
    barrier = threading.Barrier(2)

    def node(app: Any) -> None:
        barrier.wait()
        run(app, late)

    threads = [threading.Thread(target=node, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for number in numbers:
        assert len(breaches(first, number)) == 1
    assert len(notices(first)) == len(numbers)


def test_cli_show_breached_and_report(
    make_app: Any, db_url: str, clock: Any, tmp_path: Path
) -> None:
    app = sla_app(make_app, db_url)
    late_one, _ = new_ticket(app)
    _on_time, raw = new_ticket(app)
    clock.now = utc(2026, 11, 2, 10)
    agent_reply(app, raw)
    clock.now = utc(2026, 11, 2, 14)
    run(app, clock.now)
    config = ["--config", str(tmp_path / "mailbridge.toml")]
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli, [*config, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    shown = json.loads(invoke("ticket", "show", str(late_one), "--json"))
    assert shown["sla"] == {
        "name": "standard",
        "first_response_due": "2026-11-02T13:00:00Z",
        "next_response_due": None,
        "resolution_due": "2026-11-05T09:00:00Z",
        "breached": ["first_response"],
    }
    text = invoke("ticket", "show", str(late_one))
    assert "sla:       standard:" in text and "breached: first_response" in text

    listed = json.loads(invoke("tickets", "--breached", "--json"))
    assert [r["number"] for r in listed] == [late_one]

    report = json.loads(invoke("report", "--json"))
    assert report["sla"] == {
        "configured": True,
        "met": 1,
        "breached": 1,
        "rate": 0.5,
        "queues": {"support": {"met": 1, "breached": 1, "rate": 0.5}},
    }
    page = render_html(report)
    assert '<p id="sla-total">met 1, breached 1</p>' in page
    assert "<tr><td>support</td><td>1</td><td>1</td><td>50.0%</td></tr>" in page
    assert "sla-empty" not in page


def test_each_missed_next_response_is_its_own_breach(
    make_app: Any, db_url: str, clock: Any
) -> None:
    app = sla_app(make_app, db_url)
    number, raw = new_ticket(app)
    clock.now = utc(2026, 11, 2, 10)
    agent_reply(app, raw)
    # Thu 5 Nov 07:00 UTC (09:00 local) the customer writes: 8 working hours -> 15:00 UTC
    clock.now = utc(2026, 11, 5, 7)
    customer_reply(app, raw)
    run(app, clock.now)
    assert run(app, utc(2026, 11, 5, 15)) == []
    assert [c.detail for c in run(app, utc(2026, 11, 5, 15, 30))] == ["next_response by 30m"]
    clock.now = utc(2026, 11, 6, 8)
    agent_reply(app, raw)
    # again the next Monday 09:00 local; missed by an hour this time
    clock.now = utc(2026, 11, 9, 7)
    customer_reply(app, raw)
    run(app, clock.now)
    # resolution (16 working hours, paused while answered: 1h + 8h + 1h used) ran out at
    # 13:00 UTC too
    assert sorted(c.detail for c in run(app, utc(2026, 11, 9, 16))) == [
        "next_response by 1h",
        "resolution by 3h",
    ]
    assert run(app, utc(2026, 11, 9, 17)) == []
    assert [d for _, _, d in breaches(app, number)] == [
        "next_response by 30m",
        "next_response by 1h",
        "resolution by 3h",
    ]
