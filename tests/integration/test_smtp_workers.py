"""`[smtp] workers = 2` on PostgreSQL: two processes on one port, both storing, none losing mail."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.servers.ports import free_port
from tests.helpers_daemon import DaemonProcess, write_config

MAIL = (
    "From: Customer {n} <c{n}@customer.test>\r\n"
    "To: support@example.com\r\n"
    "Subject: printer {n}\r\n"
    "Message-ID: <w{n}@customer.test>\r\n"
    "\r\n"
    "It jams again.\r\n"
)


def send(port: int, n: int) -> bool:
    """One mail on a fresh connection (so the kernel may pick either worker); True on a 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(f"c{n}@customer.test", ["support@example.com"], MAIL.format(n=n))
        return True
    except (smtplib.SMTPException, OSError):
        return False


def stored_ids(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT message_id FROM messages")).scalars()
            return {row.strip("<>") for row in rows if row}
    finally:
        engine.dispose()


def workers_of(daemon: DaemonProcess) -> dict[int, int]:
    """worker index -> pid, from the main process's log."""
    found = re.findall(r"smtp worker (\d+) started \(pid (\d+)\)", daemon.log())
    return {int(index): int(pid) for index, pid in found}


def test_two_workers_share_the_port_and_a_killed_one_loses_no_acknowledged_mail(
    tmp_path: Path, pg_url: str
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "mailbridge.toml", pg_url, f"127.0.0.1:{port}", smtp="workers = 2"
    )
    daemon = DaemonProcess(tmp_path, config)
    try:
        assert workers_of(daemon).keys() == {2}
        acknowledged = [n for n in range(40) if send(port, n)]
        assert len(acknowledged) == 40
        assert {f"w{n}@customer.test" for n in acknowledged} <= stored_ids(pg_url)
        log = daemon.log()
        # one line per message at INFO, from the process that stored it
        per_message = [line for line in log.splitlines() if " INFO " in line and "ticket=" in line]
        assert len(per_message) == 40
        # every mail is logged by the process that stored it, and the kernel used both
        assert "accepted" in log
        assert re.search(r"accepted .* worker=1\n", log)
        assert re.search(r"accepted .* worker=2\n", log)

        # a worker killed outright: what it acknowledged is committed, and the port still answers
        killed = workers_of(daemon)[2]
        os.kill(killed, signal.SIGKILL)
        later = [n for n in range(40, 80) if send(port, n)]
        assert len(later) >= 1  # connections the dead worker had queued are refused, not lost
        stored = stored_ids(pg_url)
        assert {f"w{n}@customer.test" for n in acknowledged + later} <= stored

        # it is started again, and mail reaches the new one too
        deadline = time.monotonic() + 30
        while workers_of(daemon)[2] == killed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers_of(daemon)[2] != killed
        while daemon.log().count("listening for SMTP") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # each process logs this once it listens: main, worker 2, its successor
        restarted_at = len(daemon.log())
        again = [n for n in range(80, 120) if send(port, n)]
        assert len(again) == 40
        assert "worker=2" in daemon.log()[restarted_at:]
        assert daemon.terminate() == 0
        assert {f"w{n}@customer.test" for n in acknowledged + later + again} <= stored_ids(pg_url)
    finally:
        daemon.kill()
