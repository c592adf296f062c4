"""Two `mailbridge run` nodes on one PostgreSQL database post every webhook exactly once (SPEC 9):
both senders claim from the same outbox, and a real HTTP receiver counts the delivery ids."""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bench.servers.ports import free_port
from tests.configs import mailbridge_toml
from tests.helpers_daemon import DaemonProcess
from tests.mail import make_mail

SECRET = "two-nodes-secret"
MAILS = 40


class Receiver:
    """Records the delivery id of every signed POST (a bad signature is recorded apart)."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.unsigned = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers["X-Mailbridge-Signature"], good)
                with receiver.lock:
                    if signed:
                        receiver.ids[self.headers["X-Mailbridge-Delivery"]] += 1
                    else:
                        receiver.unsigned += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def node_config(path: Path, name: str, port: int, url: str, hook_url: str) -> Path:
    webhook = (
        "[[webhooks]]\n"
        'name = "crm"\n'
        f'url = "{hook_url}"\n'
        'events = ["created", "status", "message"]\n'
        'secret_env = "MB_HOOK_SECRET"\n'
        'timeout = "5s"\n'
    )
    path.write_text(
        mailbridge_toml(
            url,
            database="pool_size = 4\n",
            listen=f"127.0.0.1:{port}",
            agents=None,
            tickets="max_new_per_sender_per_hour = 100000\n",
            outbound=None,
            log='level = "warning"\n',
            extra=f'[cluster]\nnode_id = "{name}"\n\n{webhook}',
        )
    )
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
            cfg = node_config(workdir / "mailbridge.toml", name, port, pg_url, receiver.url)
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
            received = Counter(receiver.ids)
            unsigned = receiver.unsigned
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
