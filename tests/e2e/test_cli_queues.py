"""The command line of SPEC 7: `ticket assign|queue|tag|priority`, `tickets` filters, `queues`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailbridge.cli import cli
from tests.mail import make_mail

CONFIG = """
[database]
url = "{url}"

[smtp]
addresses = ["support@example.com"]

[agents]
addresses = ["alice@example.com", "bob@example.com", "erik@example.com"]

[[queues]]
name = "support"
addresses = ["support@example.com"]

[[queues]]
name = "billing"
addresses = ["billing@example.com"]
members = ["alice@example.com", "bob@example.com"]
assign = "round_robin"
"""


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "mailbridge.toml"
    path.write_text(CONFIG.replace("{url}", sqlite_url))
    mails = [
        ("billing@example.com", "Invoice"),
        ("billing@example.com", "Refund"),
        ("support@example.com", "Help"),
    ]
    for i, (to, subject) in enumerate(mails):
        (tmp_path / f"{i}.eml").write_bytes(make_mail(to=to, subject=subject))
    result = run(path, "ingest", *(str(tmp_path / f"{i}.eml") for i in range(3)))
    assert result.exit_code == 0, result.output
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def listing(config: Path, *filters: str) -> list[dict[str, Any]]:
    result = run(config, "tickets", "--json", *filters)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_routing_and_round_robin_show_in_the_listing(config: Path) -> None:
    rows = listing(config)
    assert [(r["number"], r["queue"], r["owner"], r["priority"], r["tags"]) for r in rows] == [
        (1, "billing", "alice@example.com", "normal", []),
        (2, "billing", "bob@example.com", "normal", []),
        (3, "support", None, "normal", []),
    ]


def test_ticket_commands_and_list_filters(config: Path) -> None:
    assert run(config, "ticket", "assign", "3", "erik").exit_code == 0
    assert (
        run(config, "ticket", "tag", "3", "VIP", "refund").output == "ticket #3: tags refund vip\n"
    )
    assert run(config, "ticket", "tag", "3", "refund", "--remove").exit_code == 0
    assert run(config, "ticket", "priority", "2", "urgent").exit_code == 0
    assert run(config, "ticket", "queue", "2", "support").exit_code == 0
    assert run(config, "ticket", "assign", "1", "--none").exit_code == 0
    assert [r["number"] for r in listing(config, "--queue", "support")] == [2, 3]
    assert [r["number"] for r in listing(config, "--owner", "erik@example.com")] == [3]
    assert [r["number"] for r in listing(config, "--unassigned")] == [1]
    assert [r["number"] for r in listing(config, "--tag", "vip")] == [3]
    assert [r["number"] for r in listing(config, "--priority", "urgent", "--queue", "support")] == [
        2
    ]
    assert listing(config, "--priority", "urgent", "--queue", "billing") == []
    show = json.loads(run(config, "ticket", "show", "3", "--json").stdout)
    assert (show["queue"], show["owner"], show["priority"], show["tags"]) == (
        "support",
        "erik@example.com",
        "normal",
        ["vip"],
    )
    by = show["events"][1]["actor"]
    assert by.startswith("cli:")
    assert [(e["kind"], e["detail"]) for e in show["events"][1:]] == [
        ("assign", f"none -> erik@example.com by {by}"),
        ("tag", f"+vip +refund by {by}"),
        ("tag", f"-refund by {by}"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("ticket", "assign", "1", "erik@example.com"),
            "erik@example.com is not a member of queue billing",
        ),
        (("ticket", "assign", "1", "mallory@else.example"), "mallory@else.example is not an agent"),
        (("ticket", "queue", "1", "sales"), "no queue 'sales'"),
        (("ticket", "assign", "9", "alice"), "no ticket #9"),
    ],
)
def test_refusals_exit_1_and_change_nothing(
    config: Path, args: tuple[str, ...], message: str
) -> None:
    before = listing(config)
    result = run(config, *args)
    assert result.exit_code == 1 and message in result.stderr
    assert listing(config) == before


def test_queues_json(config: Path) -> None:
    run(config, "ticket", "assign", "3", "alice")
    rows = json.loads(run(config, "queues", "--json").stdout)
    assert [(r["queue"], r["tickets"], r["total"], r["unassigned"]) for r in rows] == [
        ("support", {"new": 1}, 1, 0),
        ("billing", {"new": 2}, 2, 0),
    ]
    assert all(isinstance(r["oldest_waiting_seconds"], int) for r in rows)
    human = run(config, "queues").stdout
    assert "billing: new 2; unassigned 0; oldest waiting" in human


def test_dry_run_explains_routing_and_assignment_without_taking_a_turn(
    config: Path, tmp_path: Path
) -> None:
    mail = tmp_path / "new.eml"
    mail.write_bytes(make_mail(to="billing@example.com", subject="Another invoice"))
    for _ in range(2):  # the same turn twice: a dry run writes nothing, the cursor included
        result = run(config, "ingest", "--dry-run", "--json", str(mail))
        reason = json.loads(result.stdout)["reason"]
        assert "queue billing: to billing@example.com" in reason
        assert "assign round_robin -> alice@example.com" in reason
