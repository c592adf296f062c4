"""The command line contract (SPEC section 5): commands, JSON shapes, exit codes."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailbridge.cli import cli
from tests.mail import make_mail, message_id_of

ISO_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "mailbridge.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n[smtp]\naddresses = ["support@example.com"]\n\n'
        '[agents]\naddresses = ["alice@example.com"]\n'
    )
    return path


def run(config: Path, *args: str, input: bytes | None = None) -> Any:
    result = CliRunner().invoke(
        cli, ["--config", str(config), *args], input=input, catch_exceptions=False
    )
    return result


def test_ingest_json_tickets_and_show(config: Path, tmp_path: Path) -> None:
    first = make_mail(subject="Printer on fire", attachments=[("log.txt", "text/plain", b"x" * 10)])
    (tmp_path / "a.eml").write_bytes(first)
    (tmp_path / "b.eml").write_bytes(
        make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first))
    )
    result = run(config, "ingest", "--json", str(tmp_path / "a.eml"), str(tmp_path / "b.eml"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["outcome"], d["ticket"]) for d in lines] == [("created", 1), ("appended", 1)]
    assert set(lines[0]) == {"source", "outcome", "ticket", "reason"}
    assert lines[1]["reason"].startswith("in-reply-to <")

    listing = json.loads(run(config, "tickets", "--json").stdout)
    assert listing == [
        {
            "number": 1,
            "status": "new",
            "subject": "Printer on fire",
            "customer": "carol@customer.example",
            "created_at": listing[0]["created_at"],
            "updated_at": listing[0]["updated_at"],
            "message_count": 2,
            "queue": "support",
            "owner": None,
            "priority": "normal",
            "tags": [],
        }
    ]
    assert json.loads(run(config, "tickets", "--status", "open", "--json").stdout) == []

    show = json.loads(run(config, "ticket", "show", "1", "--json").stdout)
    assert set(show) == {
        "number",
        "status",
        "subject",
        "customer",
        "reply_to",
        "created_at",
        "updated_at",
        "postponed_until",
        "follow_up_of",
        "queue",
        "owner",
        "priority",
        "tags",
        "messages",
        "events",
        "sla",
    }
    assert show["sla"] is None  # no [[sla]] configured (SPEC 8)
    assert show["reply_to"].startswith("support+") and show["reply_to"].endswith("@example.com")
    m = show["messages"][0]
    assert set(m) == {
        "id",
        "message_id",
        "direction",
        "author_kind",
        "from",
        "to",
        "subject",
        "date",
        "stored_at",
        "attachments",
    }
    assert (m["direction"], m["author_kind"], m["from"], m["to"]) == (
        "inbound",
        "customer",
        "carol@customer.example",
        ["support@example.com"],
    )
    assert m["attachments"] == [{"filename": "log.txt", "content_type": "text/plain", "size": 10}]
    import re

    assert re.match(ISO_Z, m["stored_at"]) and re.match(ISO_Z, show["created_at"])
    assert show["events"] == [
        {
            "at": show["events"][0]["at"],
            "kind": "created",
            "actor": "carol@customer.example",
            "from_status": None,
            "to_status": "new",
            "detail": show["events"][0]["detail"],
        }
    ]
    assert show["events"][0]["detail"] == "no thread match; queue support: to support@example.com"

    human = run(config, "ticket", "show", "1").stdout
    assert "Ticket #1  [new]  Printer on fire" in human and "attachment: log.txt" in human


def test_message_raw_is_byte_identical(config: Path, tmp_path: Path) -> None:
    raw = b"From: x@y.example\r\nSubject: caf\xe9\r\nMessage-ID: <r@x>\r\n\r\nbytes \xff\r\n"
    (tmp_path / "m.eml").write_bytes(raw)
    run(config, "ingest", str(tmp_path / "m.eml"))
    result = run(config, "message", "raw", "1")
    assert result.stdout_bytes == raw


def test_ticket_actions_and_refusals(config: Path, tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_bytes(make_mail())
    run(config, "ingest", str(tmp_path / "m.eml"))
    ok = run(config, "ticket", "resolve", "1")
    assert ok.exit_code == 0 and "new -> resolved" in ok.stdout
    again = run(config, "ticket", "resolve", "1")
    assert again.exit_code == 1 and "already resolved" in again.stderr
    assert run(config, "ticket", "postpone", "1", "--until", "3d").exit_code == 0
    assert run(config, "ticket", "purge", "1").exit_code == 1
    assert run(config, "ticket", "spam", "1").exit_code == 0
    assert run(config, "ticket", "restore", "1").stdout.strip() == "ticket #1: spam -> postponed"
    missing = run(config, "ticket", "show", "99")
    assert missing.exit_code == 1 and "no ticket #99" in missing.stderr
    bad = run(config, "ticket", "postpone", "1", "--until", "someday")
    assert bad.exit_code == 2
    kinds = [
        e["kind"] for e in json.loads(run(config, "ticket", "show", "1", "--json").stdout)["events"]
    ]
    assert kinds == ["created", "resolve", "postpone", "spam", "restore"]
    assert all(
        e["actor"].startswith("cli:")
        for e in json.loads(run(config, "ticket", "show", "1", "--json").stdout)["events"][1:]
    )


def test_ingest_mbox_maildir_directory_and_dry_run(config: Path, tmp_path: Path) -> None:
    box = mailbox.mbox(tmp_path / "in.mbox")
    for i in range(3):
        box.add(make_mail(subject=f"mbox {i}"))
    box.flush()
    md = mailbox.Maildir(tmp_path / "Maildir")
    md.add(make_mail(subject="maildir"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.eml").write_bytes(make_mail(subject="dir"))
    dry = run(config, "ingest", "--dry-run", str(tmp_path / "in.mbox"))
    assert dry.exit_code == 0 and dry.stdout.count(": created") == 3
    assert json.loads(run(config, "tickets", "--json").stdout) == []
    result = run(
        config,
        "ingest",
        "--json",
        str(tmp_path / "in.mbox"),
        str(tmp_path / "Maildir"),
        str(tmp_path / "dir"),
    )
    assert [json.loads(x)["outcome"] for x in result.stdout.splitlines()] == ["created"] * 5


def test_ingest_of_a_missing_path_exits_1(config: Path, tmp_path: Path) -> None:
    result = run(config, "ingest", str(tmp_path / "nope.eml"))
    assert result.exit_code == 1 and "cannot read" in result.stderr


def test_quarantine_list_show_retry(config: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.eml").write_bytes(b"\x00\x01 garbage")
    out = json.loads(run(config, "ingest", "--json", str(tmp_path / "bad.eml")).stdout)
    assert out["outcome"] == "quarantined"
    listing = run(config, "quarantine", "list", "--json")
    (entry,) = json.loads(listing.stdout)
    assert entry["reason"].startswith("unparseable") and entry["state"] == "held"
    assert "unparseable" in run(config, "quarantine", "show", str(entry["id"])).stdout
    retry = run(config, "quarantine", "retry", str(entry["id"]))
    assert retry.exit_code == 1 and "quarantined" in retry.stdout


def test_check_config_reports_file_line_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[smtp]\nlisten = "127.0.0.1:2525"\nmode = "carrier-pigeon"\n\n[tickets]\ncolour = "blue"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(bad), "check-config"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("bad.toml:3: smtp.mode: ") or lines[0].startswith(
        f"{bad}:3: smtp.mode: "
    )
    assert any(":6: tickets.colour: unknown key" in line for line in lines)


def test_console_script_runs(tmp_path: Path) -> None:
    env = {**os.environ, "MAILBRIDGE_CONFIG": ""}
    result = subprocess.run(
        [sys.executable, "-m", "mailbridge", "check-config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0 and "embedded default" in result.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "mailbridge", "frobnicate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 2


def test_message_raw_of_a_queued_outbound_mail_says_why(tmp_path: Path, sqlite_url: str) -> None:
    from mailbridge.app import App
    from mailbridge.config import load_settings
    from mailbridge.envelope import Envelope, Source

    config = tmp_path / "ack.toml"
    config.write_text(
        f'[database]\nurl = "{sqlite_url}"\n[smtp]\naddresses = ["support@example.com"]\n[tickets]\nacknowledge = true\n'
    )
    app = App.build(load_settings(config))
    app.ingestor.accept(
        make_mail(),
        Envelope("carol@customer.example", ("support@example.com",)),
        Source("smtp", "test"),
    )
    app.close()
    show = json.loads(run(config, "ticket", "show", "1", "--json").stdout)
    (ack,) = [m for m in show["messages"] if m["direction"] == "outbound"]
    result = run(config, "message", "raw", str(ack["id"]))
    assert result.exit_code == 1 and "queued in the outbox" in result.stderr
