"""`mailbridge run` killed with SIGKILL and started again polls its IMAP mailbox at once, although
its dead process's lease has minutes left; a second live process of the same node keeps waiting."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench.servers.ports import free_port
from tests.configs import imap_account
from tests.helpers_daemon import DaemonProcess, write_config
from tests.mail import make_mail

if TYPE_CHECKING:
    from bench.servers.dovecot import DovecotServer

pytestmark = pytest.mark.dovecot
# far longer than the test may take: only a reclaim, never an expiry, lets a new process in
LEASE_TTL = "10m"


def imap_settings(server: DovecotServer) -> str:
    # no node_id: every process on this machine is the same node (the host name)
    cluster = f'[cluster]\nlease_ttl = "{LEASE_TTL}"\n'
    return imap_account(server.port, idle="true") + "\n" + cluster


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_node_killed_and_restarted_takes_its_mailbox_back_at_once(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    database = tmp_path / "mailbridge.db"

    def tickets() -> int:
        with sqlite3.connect(database) as conn:
            return int(conn.execute("SELECT count(*) FROM tickets").fetchone()[0])

    def lease() -> tuple[str, str]:
        with sqlite3.connect(database) as conn:
            row = conn.execute(
                "SELECT owner, incarnation FROM leases WHERE name = 'imap:support:INBOX'"
            ).fetchone()
        return row[0], row[1]

    def start(name: str) -> DaemonProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        listen = f"127.0.0.1:{free_port()}"
        config = write_config(
            workdir / "mailbridge.toml",
            f"sqlite:///{database}",
            listen,
            extra=imap_settings(dovecot),
        )
        password = dovecot.users["support@example.com"]
        return DaemonProcess(workdir, config, env={"MB_TEST_IMAP_PASSWORD": password})

    first = start("first")
    second: DaemonProcess | None = None
    restarted: DaemonProcess | None = None
    try:
        dovecot.append(make_mail(sender="one@customer.example"))
        wait_until(lambda: tickets() == 1, "the first ticket")
        owner, incarnation = lease()
        assert owner == socket.gethostname() and f"pid={first.proc.pid} " in incarnation

        # the same node started twice on one machine: the second process only waits
        second = start("second")
        assert second.wait_log(
            f"standby: lease held by {socket.gethostname()} (pid {first.proc.pid} on"
        )

        first.kill()  # SIGKILL: no release, the lease stays for ten more minutes
        restarted = start("restarted")
        ready = time.monotonic()
        dovecot.append(make_mail(sender="two@customer.example"))
        wait_until(lambda: tickets() == 2, "the restarted node to poll")
        took = time.monotonic() - ready
        print(f"\nrestarted node: ticket {took:.1f} s after READY=1 (lease ttl {LEASE_TTL})")

        assert f"pid={restarted.proc.pid} " in lease()[1]
        assert f"earlier process (pid {first.proc.pid} on" in restarted.log()
        assert "connected to" not in second.log()  # it never polled alongside
    finally:
        for daemon in (first, second, restarted):
            if daemon is not None and daemon.proc.poll() is None:
                daemon.terminate()
