"""Two `mailbridge run` nodes on one PostgreSQL database, both listening for SMTP and both
configured for the same Dovecot mailbox: nothing is stored twice, no acknowledgement is sent
twice, and when one node is killed the other takes over its mailbox and its queued mail."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bench.servers.dovecot import PASSWORD, DovecotServer
from bench.servers.ports import free_port
from bench.servers.smtp_sink import SmtpSink
from tests.configs import imap_account, node_toml
from tests.helpers_daemon import DaemonProcess
from tests.mail import make_mail

LEASE_TTL = 3


def node_config(
    path: Path, name: str, port: int, url: str, imap: DovecotServer, sink: SmtpSink
) -> Path:
    tickets = (
        "acknowledge = true\n"
        "ack_max_per_sender_per_hour = 1000\n"
        "ack_max_per_domain_per_hour = 100000\n"
        "ack_max_per_hour = 100000\n"
        "max_new_per_sender_per_hour = 100000\n"
    )
    mailbox = imap_account(imap.port, after='"seen"', idle="true", poll_interval='"2s"')
    cluster = f'lease_ttl = "{LEASE_TTL}s"\n'
    outbound = sink.outbound_toml(timeout="2s")
    path.write_text(
        node_toml(
            url, name, port, tickets=tickets, outbound=outbound, cluster=cluster, extra=mailbox
        )
    )
    return path


def mail(i: int, batch: str) -> bytes:
    # one customer per message: every message opens its own ticket and earns one acknowledgement
    return make_mail(
        sender=f"Customer {i} <c{batch}{i}@customer.example>",
        subject=f"{batch} {i}",
        message_id=f"<{batch}-{i}@customer.example>",
    ).replace(b"\n", b"\r\n")


class Client:
    """Sends like an MTA: a message counts as delivered only after `250`; otherwise it is sent
    again (to the other node when its first node is gone)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.acknowledged: set[str] = set()
        self.resent = 0
        self.lock = threading.Lock()

    def send_all(self, items: list[tuple[str, bytes]], prefer: int) -> None:
        order = [self.ports[prefer], *[p for p in self.ports if p != self.ports[prefer]]]
        conn: smtplib.SMTP | None = None
        for mid, raw in items:
            for attempt in range(40):
                port = order[0] if attempt == 0 else order[attempt % len(order)]
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
                    conn.sendmail("mta@customer.example", ["support@example.com"], raw)
                    with self.lock:
                        self.acknowledged.add(mid)
                    break
                except smtplib.SMTPResponseException as exc:
                    if exc.smtp_code >= 500:
                        raise AssertionError(f"{mid} refused: {exc}") from exc
                    conn = None
                    with self.lock:
                        self.resent += 1
                    time.sleep(0.1)
                except (OSError, smtplib.SMTPException):
                    conn = None
                    with self.lock:
                        self.resent += 1
                    time.sleep(0.1)
            else:
                raise AssertionError(f"{mid} could not be delivered to any node")
        if conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()

    def run(
        self, items: list[tuple[str, bytes]], threads_per_node: int = 4
    ) -> list[threading.Thread]:
        chunks = [
            items[i :: threads_per_node * len(self.ports)]
            for i in range(threads_per_node * len(self.ports))
        ]
        workers = [
            threading.Thread(target=self.send_all, args=(chunk, i % len(self.ports)), daemon=True)
            for i, chunk in enumerate(chunks)
        ]
        for w in workers:
            w.start()
        return workers


def inbound_ids(engine: Any) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id FROM messages WHERE author_kind = 'customer'"))
        return Counter(r[0] for r in rows)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def lease_owner(engine: Any) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT owner FROM leases WHERE name LIKE 'imap:support:%'")
        ).scalar()


# 3,000 mails through two daemons: a few minutes on a busy 2-core machine
@pytest.mark.timeout(900)
def test_two_nodes_then_one_killed(
    pg_url: str,
    dovecot: DovecotServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MB_TEST_IMAP_PASSWORD", PASSWORD)
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with SmtpSink.running() as sink:
        ports = [free_port(), free_port()]
        nodes = {}
        for name, port in zip(("node-a", "node-b"), ports, strict=True):
            workdir = tmp_path / name
            workdir.mkdir()
            cfg = node_config(workdir / "mailbridge.toml", name, port, pg_url, dovecot, sink)
            nodes[name] = DaemonProcess(
                workdir, cfg, env={"MB_TEST_IMAP_PASSWORD": PASSWORD}, timeout=60
            )
        try:
            started = time.monotonic()
            # --- batch 1: 2,000 by SMTP, half to each node, and 1,000 into the shared mailbox
            client = Client(ports)
            smtp_items = [(f"one-{i}@customer.example", mail(i, "one")) for i in range(2000)]
            workers = client.run(smtp_items)
            dovecot.append_many(mail(i, "box") for i in range(1000))
            for w in workers:
                w.join(300)
            assert len(client.acknowledged) == 2000
            wait_until(
                lambda: sum(inbound_ids(engine).values()) >= 3000, 240, "3,000 stored messages"
            )
            stored = inbound_ids(engine)
            assert sum(stored.values()) == 3000 and max(stored.values()) == 1
            # every new ticket is acknowledged exactly once, whichever node's sender took it
            wait_until(lambda: len(sink.received) >= 3000, 240, "3,000 acknowledgements")
            time.sleep(2)  # a double send would show up now
            per_customer = Counter(r.rcpt_tos for r in sink.received)
            assert len(per_customer) == 3000 and max(per_customer.values()) == 1

            print(f"\nbatch 1: 3,000 stored and acknowledged in {time.monotonic() - started:.1f} s")
            # --- batch 2: kill -9 the node that polls the mailbox in the middle of it
            holder = lease_owner(engine)
            assert holder in nodes
            survivor = "node-b" if holder == "node-a" else "node-a"
            client2 = Client(ports)
            second = [(f"two-{i}@customer.example", mail(i, "two")) for i in range(600)]
            workers = client2.run(second)
            time.sleep(1.5)
            nodes[holder].proc.send_signal(signal.SIGKILL)
            nodes[holder].kill()
            killed_at = time.monotonic()
            dovecot.append_many(mail(i, "late") for i in range(300))
            for w in workers:
                w.join(300)
            assert len(client2.acknowledged) == 600  # resent to the survivor where needed
            wait_until(
                lambda: lease_owner(engine) == survivor, 4 * LEASE_TTL + 10, "lease takeover"
            )
            took_over = time.monotonic() - killed_at
            wait_until(
                lambda: sum(inbound_ids(engine).values()) >= 3900, 240, "3,900 stored messages"
            )
            stored = inbound_ids(engine)
            # mail the dead node acknowledged is there; mail it had not is there once, by the resend
            assert sum(stored.values()) == 3900 and max(stored.values()) == 1
            for prefix, count in (("two", 600), ("late", 300)):
                assert sum(1 for m in stored if m.startswith(f"{prefix}-")) == count
            print(
                f"\nlease taken over {took_over:.1f} s after kill -9 (ttl {LEASE_TTL} s); {client2.resent} resends"
            )
            # the survivor also sends what the dead node had queued: every new ticket is acknowledged
            # (rows the dead node had claimed come back after the sender's claim lease)
            wait_until(
                lambda: len({r.rcpt_tos for r in sink.received}) >= 3900,
                120,
                "all acknowledgements",
            )
            print(f"all 3,900 acknowledged {time.monotonic() - killed_at:.1f} s after the kill")
        finally:
            for node in nodes.values():
                if node.proc.poll() is None:
                    node.terminate()
            engine.dispose()
