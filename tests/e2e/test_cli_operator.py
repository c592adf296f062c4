"""The operator's command line beyond SPEC section 5's basics: --version, --config anywhere, help
everywhere, bulk quarantine release, the outbox, relative postpone times, and `ingest` on inputs
it must not read (a file over the size limit, a FIFO)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from bench.servers.smtp_sink import SmtpSink
from mailbridge.app import App
from mailbridge.cli import cli
from mailbridge.config import load_settings
from mailbridge.envelope import Envelope, Source
from mailbridge.outbound.sender import OutboxSender, SenderConfig
from tests.mail import make_mail

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "mailbridge.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[smtp]\naddresses = ["support@example.com"]\n' + extra
    )
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def mailbridge(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "mailbridge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"mailbridge {version('mailbridge')}"


def test_config_before_or_after_the_subcommand(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url)
    before = run("--config", str(config), "check-config")
    after = run("check-config", "--config", str(config))
    nested = run("ticket", "show", "1", "--config", str(config))
    assert before.exit_code == after.exit_code == 0
    assert before.stdout == after.stdout
    assert before.stdout.splitlines()[0] == f"{config}: ok"
    assert "addresses: support@example.com" in before.stdout
    assert nested.exit_code == 1 and "no ticket #1" in nested.stderr


def test_every_command_and_option_has_help() -> None:
    missing: list[str] = []

    def walk(command: click.Command, path: str) -> None:
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(cli, "mailbridge")
    assert missing == []
    listing = run("quarantine", "--help").stdout
    for name in ("list", "retry", "show"):
        line = next(x for x in listing.splitlines() if x.strip().startswith(name + " "))
        assert len(line.split()) > 1, line  # a one-line description beside the name


def test_quarantine_retry_all_releases_a_flood(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url, "[tickets]\nmax_new_per_sender_per_hour = 2\n")
    app = App.build(load_settings(config))
    try:
        for i in range(12):
            app.ingestor.accept(
                make_mail(subject=f"load test {i}"),
                Envelope("carol@customer.example", ("support@example.com",)),
                Source("smtp", "127.0.0.1", live=True),
            )
        app.ingestor.accept(b"\x00\x01 garbage", Envelope(), Source("smtp", "x", live=True))
    finally:
        app.close()
    held = json.loads(run("--config", str(config), "quarantine", "list", "--json").stdout)
    assert sorted(q["reason"].split(":")[0] for q in held) == ["flood"] * 10 + ["unparseable"]

    released = run("--config", str(config), "quarantine", "retry", "--all", "--reason", "flood")
    assert released.exit_code == 0, released.output
    assert released.stdout.count(": created ticket #") == 10
    assert released.stderr.strip() == "retried: 10 created"
    tickets = json.loads(run("--config", str(config), "tickets", "--json").stdout)
    assert len(tickets) == 12
    (left,) = json.loads(run("--config", str(config), "quarantine", "list", "--json").stdout)
    assert left["reason"].startswith("unparseable")

    both = run("--config", str(config), "quarantine", "retry", "--all", str(left["id"]))
    assert both.exit_code == 2 and both.stderr.count("\n") == 1
    again = run("--config", str(config), "quarantine", "retry", str(left["id"]), "99")
    assert again.exit_code == 1
    assert "quarantined" in again.stdout and "no quarantine entry 99" in again.stderr


def test_outbox_failed_delivery_is_visible_and_retried(tmp_path: Path, sqlite_url: str) -> None:
    with SmtpSink.running() as sink:
        config = write_config(
            tmp_path, sqlite_url, "[tickets]\nacknowledge = true\n" + sink.outbound_toml()
        )
        settings = load_settings(config)
        app = App.build(settings)
        try:
            app.ingestor.accept(
                make_mail(subject="Printer on fire"),
                Envelope("carol@customer.example", ("support@example.com",)),
                Source("smtp", "127.0.0.1", live=True),
            )
            sink.script("554 5.7.1 rejected by policy: spam score 12")
            OutboxSender(app.store, SenderConfig.from_settings(settings), app.clock).deliver_due()

            failed = json.loads(
                run("--config", str(config), "outbox", "list", "--failed", "--json").stdout
            )
            (row,) = failed
            assert (row["kind"], row["state"], row["ticket"]) == ("ack", "failed", 1)
            assert row["rcpt_tos"] == ["carol@customer.example"]
            assert row["last_error"] == "554 5.7.1 rejected by policy: spam score 12"
            show = run("--config", str(config), "outbox", "show", str(row["id"])).stdout
            assert "last_error:      554 5.7.1 rejected by policy: spam score 12" in show

            thread = run("--config", str(config), "ticket", "show", "1").stdout
            lines = thread.splitlines()
            at = next(i for i, x in enumerate(lines) if "** delivery-failed:" in x)
            assert "554 5.7.1 rejected by policy: spam score 12" in lines[at + 1]

            retried = run("--config", str(config), "outbox", "retry", str(row["id"]), "999")
            assert retried.exit_code == 1
            assert retried.stdout.strip() == f"outbox {row['id']}: failed -> queued, due now"
            assert "no outbox entry 999" in retried.stderr
            assert (
                OutboxSender(
                    app.store, SenderConfig.from_settings(settings), app.clock
                ).deliver_due()
                == 1
            )
            assert [r.rcpt_tos for r in sink.received] == [("carol@customer.example",)]
            sent = json.loads(run("--config", str(config), "outbox", "list", "--json").stdout)
            assert [r["state"] for r in sent if r["kind"] == "ack"] == ["sent"]
            assert run("--config", str(config), "outbox", "list", "--failed").stdout.strip() == (
                "no failed mail in the outbox"
            )
            resent = run("--config", str(config), "outbox", "retry", str(row["id"]))
            assert resent.exit_code == 1 and "already sent" in resent.stderr
        finally:
            app.close()


def test_postpone_accepts_relative_times_and_refuses_absurd_ones(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(tmp_path, sqlite_url)
    (tmp_path / "m.eml").write_bytes(make_mail())
    run("--config", str(config), "ingest", str(tmp_path / "m.eml"))

    def until() -> datetime:
        show = json.loads(run("--config", str(config), "ticket", "show", "1", "--json").stdout)
        return datetime.fromisoformat(show["postponed_until"].replace("Z", "+00:00"))

    before = datetime.now(UTC).replace(microsecond=0)
    assert run("--config", str(config), "ticket", "postpone", "1", "--until", "+2d").exit_code == 0
    assert before + timedelta(days=2) <= until() <= datetime.now(UTC) + timedelta(days=2)
    ok = run("--config", str(config), "ticket", "postpone", "1", "--until", "tomorrow 09:00")
    assert ok.exit_code == 0, ok.output
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert until() in (
        datetime(d.year, d.month, d.day, 9, tzinfo=UTC)
        for d in (tomorrow, tomorrow + timedelta(days=1))  # the date may turn meanwhile
    )
    for bad in ("+99999999d", "+99999999999999999999d", "tomorrow 25:00", "someday"):
        result = mailbridge(
            "--config", str(config), "ticket", "postpone", "1", "--until", bad, cwd=tmp_path
        )
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("mailbridge: --until")
        assert "Traceback" not in result.stderr
    # the report's period names the option that was wrong
    for option in ("--since", "--until"):
        result = mailbridge("--config", str(config), "report", option, "someday", cwd=tmp_path)
        assert result.returncode == 2, (option, result.stderr)
        assert result.stderr.startswith(f"mailbridge: {option} 'someday'"), result.stderr


def test_ingest_refuses_a_file_over_the_size_limit_without_reading_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(tmp_path, sqlite_url)
    big = tmp_path / "big.eml"
    with big.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: 2 GB that cost no disk
    (tmp_path / "ok.eml").write_bytes(make_mail())
    result = mailbridge(
        "--config",
        str(config),
        "ingest",
        "--json",
        str(big),
        str(tmp_path / "ok.eml"),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"mailbridge: skipped {big}: 2 GB is over [smtp] max_message_size (25 MB); "
        "the file is left alone"
    ]
    assert [json.loads(x)["outcome"] for x in result.stdout.splitlines()] == ["created"]
    assert big.stat().st_size == 2 * 1024**3


def test_ingest_of_a_sparse_file_keeps_memory_small(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url)
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate(2 * 1024**3)
    # the peak RSS of this process image, read by itself at the end: a parent's ru_maxrss would
    # include the memory of the forked test runner
    measured = (
        "import sys\n"
        "from mailbridge.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "peak = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "print(f'peak {peak} kB', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-c", measured, "--config", str(config), "ingest", str(big)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = result.stderr.splitlines()
    skipped, peak = lines[0], lines[-1]
    assert result.returncode == 1 and "over [smtp] max_message_size" in skipped
    assert int(peak.split()[1]) < 200 * 1024, peak


def test_ingest_skips_fifos_instead_of_blocking(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.eml").write_bytes(make_mail(subject="one"))
    os.mkfifo(inbox / "pipe.eml")
    os.mkfifo(tmp_path / "alone")
    result = mailbridge(
        "--config",
        str(config),
        "ingest",
        "--json",
        str(inbox),
        str(tmp_path / "alone"),
        cwd=tmp_path,
    )  # a blocked open() would hit the timeout and fail here
    assert result.returncode == 1
    assert sorted(result.stderr.splitlines()) == [
        f"mailbridge: skipped {tmp_path / 'alone'}: a FIFO, skipped",
        f"mailbridge: skipped {inbox / 'pipe.eml'}: a FIFO, skipped",
    ]
    assert [json.loads(x)["outcome"] for x in result.stdout.splitlines()] == ["created"]


def test_auth_users_help_prints_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailbridge.auth_users", "--help"],
        capture_output=True,
        text=True,
        input="",
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m mailbridge.auth_users")
    assert "LOGIN" in result.stdout and "--help" not in result.stdout.split("\n", 1)[0][6:]
    made = subprocess.run(
        [sys.executable, "-m", "mailbridge.auth_users", "Alice@example.com"],
        capture_output=True,
        text=True,
        input="s3cret\n",
        cwd=ROOT,
    )
    assert made.returncode == 0 and made.stdout.startswith("alice@example.com:scrypt$")


def test_run_logs_the_config_database_and_addresses(tmp_path: Path) -> None:
    from bench.servers.ports import free_port

    port = free_port()
    config = write_config(
        tmp_path,
        f"sqlite:///{tmp_path}/mb.db",
        f'listen = "127.0.0.1:{port}"\n',
    )
    env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailbridge", "run", "--config", str(config)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:  # ends if the daemon dies before saying it runs
            seen.append(line)
            if "mailbridge running" in line:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, "".join(seen) + rest
    assert (
        seen[-1]
        .rstrip()
        .endswith(
            f"mailbridge running: config {config}; database sqlite:///{tmp_path}/mb.db; "
            f"SMTP on 127.0.0.1:{port} for support@example.com (and their plus-tokens)"
        )
    )


def test_database_passwords_never_print(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql://mb:hunter2@db.example/mb")
    result = run("check-config", "--config", str(config))
    assert result.exit_code == 0
    assert "  database:  postgresql://mb:***@db.example/mb" in result.stdout
    assert "hunter2" not in result.output


def test_run_refuses_an_unsupported_database_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "mysql://root@localhost/mb")
    result = mailbridge("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:2: database.url: unsupported database mysql:// "
        "(use sqlite:///path or postgresql://user@host/db)"
    ]


def test_ingest_skips_oversize_messages_inside_mbox_and_maildir(
    tmp_path: Path, sqlite_url: str
) -> None:
    import mailbox

    config = write_config(tmp_path, sqlite_url, 'max_message_size = "2KB"\n')
    big = make_mail(subject="big", body="x" * 4000)
    box = mailbox.mbox(tmp_path / "in.mbox")
    box.add(make_mail(subject="small mbox"))
    box.add(big)
    box.flush()
    md = mailbox.Maildir(tmp_path / "Maildir")
    key = md.add(big)
    md.add(make_mail(subject="small maildir"))
    result = run(
        "--config",
        str(config),
        "ingest",
        "--json",
        str(tmp_path / "in.mbox"),
        str(tmp_path / "Maildir"),
    )
    assert result.exit_code == 1
    assert [json.loads(x)["outcome"] for x in result.stdout.splitlines()] == ["created"] * 2
    skipped = result.stderr.splitlines()
    assert len(skipped) == 2 and all("over [smtp] max_message_size (2 KB)" in x for x in skipped)
    assert skipped[0].startswith(f"mailbridge: skipped {tmp_path / 'in.mbox'}#2: ")
    assert skipped[1].startswith(f"mailbridge: skipped {tmp_path / 'Maildir' / 'new' / key}: ")
