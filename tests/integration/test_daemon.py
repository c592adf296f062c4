"""`mailbridge run` as a real process: readiness, signals, reload, embedded default (SPEC 4, 5).

Each test starts the daemon as a subprocess on a free 127.0.0.1 port with a temp config and waits
for READY=1 on a private $NOTIFY_SOCKET, the way systemd would.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.servers.ports import free_port
from tests.env import REPO
from tests.helpers_daemon import DaemonProcess, settings_from, write_config
from tests.mail import make_mail as make_lf_mail
from tests.smtp_client import RawClient

SUPPORT = "support@example.com"


def make_mail(**kwargs: object) -> bytes:
    return make_lf_mail(**kwargs).replace(b"\n", b"\r\n")  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    return write_config(tmp_path / "mailbridge.toml", sqlite_url, f"127.0.0.1:{free_port()}")


def port_of(config: Path) -> int:
    return int(settings_from(config).smtp.listen.rsplit(":", 1)[1])


def send(port: int, rcpt: str = SUPPORT, raw: bytes | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("carol@customer.example")
        code, text = smtp.rcpt(rcpt)
        if code != 250:
            return code, text
        return smtp.data(raw or make_mail(to=rcpt))


def test_run_reports_ready_serves_mail_and_stops_cleanly(tmp_path: Path, config: Path) -> None:
    proc = DaemonProcess(tmp_path, config)
    try:
        code, text = send(port_of(config))
        # a queue id, not the ticket number (a stranger must not learn ticket numbers)
        assert code == 250 and re.fullmatch(rb"2\.0\.0 Ok: queued as [0-9A-F]{10}", text)
    finally:
        assert proc.terminate() == 0
    assert proc.notify.wait_for("STOPPING=1", 0)
    log = proc.log()
    assert "accepted from=<carol@customer.example> rcpt=<support@example.com>" in log
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert f"queue_id={queue_id} created ticket=1" in log and "Traceback" not in log


def test_sigterm_during_data_finishes_that_message(tmp_path: Path, config: Path) -> None:
    proc = DaemonProcess(tmp_path, config)
    port = port_of(config)
    busy, idle = RawClient(port), RawClient(port)
    try:
        assert busy.reply().startswith(b"220") and idle.reply().startswith(b"220")
        assert busy.command("EHLO client.example").startswith(b"250")
        assert busy.command("MAIL FROM:<carol@customer.example>").startswith(b"250")
        assert busy.command(f"RCPT TO:<{SUPPORT}>").startswith(b"250")
        assert busy.command("DATA").startswith(b"354")
        raw = make_mail(subject="Sent while the daemon stops")
        busy.sock.sendall(raw[: len(raw) // 2])

        proc.signal(signal.SIGTERM)
        assert proc.wait_log("SIGTERM received")
        assert idle.reply().startswith(b"421 4.3.2")  # not in a transaction: closed at once
        time.sleep(0.3)
        assert proc.proc.poll() is None  # still waiting for the message in flight

        busy.sock.sendall(raw[len(raw) // 2 :] + b".\r\n")
        assert re.fullmatch(rb"250 2\.0\.0 Ok: queued as [0-9A-F]{10}\r\n", busy.reply())
        assert busy.reply().startswith(b"421 4.3.2")  # then it is closed too
        assert proc.wait(15) == 0
    finally:
        busy.close()
        idle.close()
        proc.kill()
    # the message is really there, with a fresh look at the database
    from mailbridge.app import App
    from mailbridge.storage import repo

    app = App.build(settings_from(config))
    try:
        with app.store.unit() as session:
            ticket = repo.get_ticket(session, 1)
            assert ticket is not None and ticket.subject == "Sent while the daemon stops"
    finally:
        app.close()


def test_sighup_reloads_and_a_broken_config_keeps_the_old_one(tmp_path: Path, config: Path) -> None:
    proc = DaemonProcess(tmp_path, config)
    port = port_of(config)
    try:
        assert send(port, "help@example.com")[0] == 550
        text = config.read_text()
        config.write_text(text.replace(f'["{SUPPORT}"]', f'["{SUPPORT}", "help@example.com"]'))
        proc.signal(signal.SIGHUP)
        assert proc.wait_log("configuration reloaded")
        assert proc.notify.wait_for("RELOADING=1", 5)
        assert send(port, "help@example.com")[0] == 250

        lines = config.read_text().splitlines()
        number = lines.index("max_new_per_sender_per_hour = 100000") + 1
        lines[number - 1] = 'max_new_per_sender_per_hour = "lots"'
        config.write_text("\n".join(lines))
        proc.signal(signal.SIGHUP)
        assert proc.wait_log("reload failed: keeping the running configuration")
        problem = f"{config}:{number}: tickets.max_new_per_sender_per_hour: expected an integer"
        assert problem in proc.log()  # each problem named with its file and line
        assert send(port, "help@example.com")[0] == 250
    finally:
        assert proc.terminate() == 0


def test_watchdog_is_pinged_when_systemd_asks(tmp_path: Path, config: Path) -> None:
    proc = DaemonProcess(tmp_path, config, env={"WATCHDOG_USEC": "200000"})
    try:
        proc.notify.messages.clear()
        assert proc.notify.wait_for("WATCHDOG=1", 2)
    finally:
        assert proc.terminate() == 0


def run_once(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`mailbridge run` expected to exit on its own (bad config, busy port), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mailbridge", "--config", str(config), "run"],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_invalid_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nlisten = "127.0.0.1:2525"\nmax_recipients = "many"\n')
    result = run_once(bad, tmp_path)
    assert result.returncode == 2
    assert f"{bad}:3: smtp.max_recipients: expected an integer" in result.stderr


def test_broken_users_file_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    users = tmp_path / "users"
    users.write_text("alice@example.com:not-a-hash\n")
    config = write_config(
        tmp_path / "mailbridge.toml",
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        f'auth_users_file = "{users}"\nauth_require_tls = false',
    )
    result = run_once(config, tmp_path)
    assert result.returncode == 2
    assert f"{users}:1: auth_users_file: unknown hash scheme" in result.stderr


def test_embedded_default_without_any_config(tmp_path: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 2525))
        except OSError:
            pytest.skip("127.0.0.1:2525 is in use here")
    proc = DaemonProcess(tmp_path, None)
    try:
        assert (tmp_path / "var" / "mailbridge.db").is_file()
        assert send(2525, "support@localhost")[0] == 250
    finally:
        assert proc.terminate() == 0


def test_a_busy_port_exits_1(tmp_path: Path, config: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port_of(config)))
        taken.listen()
        result = run_once(config, tmp_path)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "address already in use" in result.stderr.lower()


def test_sd_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailbridge.daemon import sd_notify, watchdog_interval

    name = f"mailbridge-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1", "STATUS=ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")  # not under systemd: a no-op
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval() == 2.0


def test_json_log_lines() -> None:
    import io
    import json
    import logging

    from mailbridge import logging_setup
    from mailbridge.config import LogSettings

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logging_setup.configure(LogSettings(level="info", format="json"), stream)
        logging.getLogger("mailbridge.smtp").info("accepted %s", "x", extra={"ticket": 7})
        logging.getLogger("mailbridge.smtp").debug("not shown")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    [line] = stream.getvalue().splitlines()
    data = json.loads(line)
    assert (data["level"], data["logger"], data["msg"], data["ticket"]) == (
        "info",
        "mailbridge.smtp",
        "accepted x",
        7,
    )
    assert data["ts"].endswith("Z")
