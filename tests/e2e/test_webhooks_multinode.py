"""Two `mailbridge run` nodes on one PostgreSQL database post every webhook exactly once (SPEC 9):
both senders claim from the same outbox, and a real HTTP receiver counts the delivery ids."""

from __future__ import annotations

import smtplib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bench.servers.ports import free_port
from tests.configs import node_toml
from tests.helpers_daemon import DaemonProcess
from tests.mail import make_mail
from tests.receiver import Receiver

SECRET = "two-nodes-secret"
MAILS = 40


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as running:
        yield running


def node_config(path: Path, name: str, port: int, url: str, webhook: str) -> Path:
    tickets = "max_new_per_sender_per_hour = 100000\n"
    path.write_text(node_toml(url, name, port, tickets=tickets, outbound=None, extra=webhook))
    return path


def webhook_rows(engine: Any) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT rcpt_key, state FROM outbox WHERE kind = 'webhook'"))
        return [(r[0], r[1]) for r in rows]


@pytest.mark.timeout(120)
def test_two_daemons_on_postgresql_post_each_event_once(
    pg_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    ports = [free_port(), free_port()]
    nodes = []
    try:
        for name, port in zip(("node-a", "node-b"), ports, strict=True):
            workdir = tmp_path / name
            workdir.mkdir()
            webhook = receiver.webhook_toml('["created", "status", "message"]')
            cfg = node_config(workdir / "mailbridge.toml", name, port, pg_url, webhook)
            nodes.append(DaemonProcess(workdir, cfg, env={"MB_HOOK_SECRET": SECRET}, timeout=60))
        # half the mail to each node; each opens a ticket: a `created` and a `message` post
        for i in range(MAILS):
            raw = make_mail(sender=f"c{i}@customer.example", subject=f"Question {i}")
            with smtplib.SMTP("127.0.0.1", ports[i % 2], timeout=30) as smtp:
                smtp.sendmail(f"c{i}@customer.example", ["support@example.com"], raw)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = webhook_rows(engine)
            if len(rows) >= 2 * MAILS and all(state == "sent" for _, state in rows):
                break
            time.sleep(0.25)
        rows = webhook_rows(engine)
        with engine.connect() as conn:
            tickets = conn.execute(text("SELECT count(*) FROM tickets")).scalar()
            messages = conn.execute(text("SELECT count(*) FROM messages")).scalar()
        assert tickets == MAILS
        # one `created` per ticket and one `message` per stored message, each queued once
        assert len(rows) == tickets + messages
        assert {state for _, state in rows} == {"sent"}
        time.sleep(1)  # a second post of some event would arrive now
        with receiver.lock:
            posts = list(receiver.posts)
        received = Counter(p.headers["x-mailbridge-delivery"] for p in posts if p.signed())
        unsigned = sum(not p.signed() for p in posts)
        queued = {key for key, _ in rows}
        assert len(queued) == len(rows)
        assert unsigned == 0
        assert sorted(k for k, n in received.items() if n > 1) == []  # duplicates: none
        assert sorted(queued - set(received)) == []  # missing: none
        assert set(received) == queued
    finally:
        for node in nodes:
            node.terminate()
        engine.dispose()
