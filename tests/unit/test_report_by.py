"""`report --by queue|owner|tag|priority` (SPEC 7): the breakdown numbers on a known history,
and the same through the command line on a real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from click.testing import CliRunner

from mailbridge.cli import cli
from mailbridge.report import render, summarize

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = 3600.0


def ticket(number: int, status: str, queue: str, owner: str | None, priority: str) -> Any:
    return SimpleNamespace(
        number=number,
        status=status,
        mailbox="",
        created_at=T0,
        follow_up_of=None,
        queue=queue,
        owner=owner,
        priority=priority,
    )


def ev(number: int, hours: float, kind: str, before: str | None, after: str | None) -> Any:
    at = T0 + timedelta(hours=hours)
    return SimpleNamespace(
        ticket_number=number, at=at, kind=kind, from_status=before, to_status=after
    )


TICKETS = [
    ticket(1, "resolved", "billing", "alice@example.com", "high"),
    ticket(2, "answered", "billing", "bob@example.com", "normal"),
    ticket(3, "new", "support", None, "low"),
    ticket(4, "open", "support", "alice@example.com", "normal"),
]
EVENTS = [
    *(ev(n, 0, "created", None, "new") for n in (1, 2, 3, 4)),
    ev(1, 1, "agent-reply", "new", "answered"),
    ev(1, 3, "resolve", "answered", "resolved"),
    ev(2, 2, "agent-reply", "new", "answered"),
    ev(4, 4, "agent-reply", "new", "answered"),
    ev(4, 5, "resolve", "answered", "resolved"),
    ev(4, 6, "customer-mail", "resolved", "open"),  # came back
    ev(4, 6, "assign", "open", "open"),  # no status change: ends no stretch
]
TAGS = {1: ["vip"], 2: ["refund", "vip"]}


def row(
    tickets: int,
    share: float,
    open_now: int,
    fr: tuple[Any, Any],
    res: tuple[Any, Any],
    reopen: Any,
) -> dict[str, Any]:
    return {
        "tickets": tickets,
        "share": share,
        "open_now": open_now,
        "first_response_p50": fr[0],
        "first_response_p90": fr[1],
        "resolution_p50": res[0],
        "resolution_p90": res[1],
        "reopen_rate": reopen,
    }


def test_breakdowns_on_a_known_history() -> None:
    report = summarize(TICKETS, EVENTS, T0 + timedelta(days=1), tags=TAGS)
    assert report["by_queue"] == {
        "billing": row(2, 0.5, 1, (1.5 * H, 1.9 * H), (3 * H, 3 * H), 0.0),
        "support": row(2, 0.5, 2, (4 * H, 4 * H), (5 * H, 5 * H), 1.0),
    }
    assert report["by_owner"] == {
        "alice@example.com": row(2, 0.5, 1, (2.5 * H, 3.7 * H), (4 * H, 4.8 * H), 0.5),
        "bob@example.com": row(1, 0.25, 1, (2 * H, 2 * H), (None, None), None),
        "(none)": row(1, 0.25, 1, (None, None), (None, None), None),
    }
    assert list(report["by_tag"]) == ["refund", "vip", "(none)"]
    assert report["by_tag"]["vip"]["tickets"] == 2 and report["by_tag"]["vip"]["share"] == 0.5
    assert report["by_tag"]["(none)"]["open_now"] == 2
    assert list(report["by_priority"]) == ["high", "normal", "low"]
    assert report["by_priority"]["normal"] == row(2, 0.5, 2, (3 * H, 3.8 * H), (5 * H, 5 * H), 1.0)
    human = render(report, by=("owner",))
    assert "By owner" in human and "By queue" not in human and "alice@example.com" in human


def test_report_by_through_the_command_line(tmp_path: Path, sqlite_url: str) -> None:
    from tests.mail import make_mail

    config = tmp_path / "mailbridge.toml"
    config.write_text(
        f'[database]\nurl = "{sqlite_url}"\n[agents]\naddresses = ["alice@example.com"]\n'
        '[[queues]]\nname = "support"\naddresses = ["support@example.com"]\n'
        '[[queues]]\nname = "billing"\naddresses = ["billing@example.com"]\n'
        'members = ["alice@example.com"]\nassign = "round_robin"\n'
    )
    for i, to in enumerate(("billing@example.com", "support@example.com", "support@example.com")):
        (tmp_path / f"{i}.eml").write_bytes(make_mail(to=to))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)

    assert run("ingest", *(str(tmp_path / f"{i}.eml") for i in range(3))).exit_code == 0
    run("ticket", "tag", "2", "vip")
    data = json.loads(run("report", "--json").stdout)
    assert {k: v["tickets"] for k, v in data["by_queue"].items()} == {"billing": 1, "support": 2}
    assert {k: v["tickets"] for k, v in data["by_owner"].items()} == {
        "alice@example.com": 1,
        "(none)": 2,
    }
    assert {k: v["share"] for k, v in data["by_tag"].items()} == {"vip": 0.3333, "(none)": 0.6667}
    assert data["by_priority"]["normal"]["open_now"] == 3
    human = run("report", "--by", "queue").stdout
    assert "By queue" in human and "By owner" not in human
