"""Parsing in worker processes (issue 14): a mail that stalls its parser holds neither the
listener nor the watchdog, one over the deadline is quarantined `parse timeout`, the pool
keeps working after killing a worker, and `ingest` decides exactly the same with the pool as
without it."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.servers.ports import free_port
from mailbridge import parse_pool
from mailbridge.cli import cli
from mailbridge.parse_pool import (
    PARSE_TIMEOUT,
    ParsePool,
    parse_ahead,
)
from mailbridge.storage import repo
from tests import parse_faults
from tests.helpers_daemon import (
    InProcessDaemon,
    settings_from,
    write_config,
)
from tests.mail import make_mail as make_lf_mail
from tests.mail import message_id_of


@pytest.fixture
def stalling(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pool sends the functions to its workers by name: they import them (a light module,
    # so a fresh worker starts on a task at once)
    monkeypatch.setattr(parse_pool, "parse_safely", parse_faults.stalling_parse)
    monkeypatch.setattr(parse_pool, "parse_chunk", parse_faults.stalling_chunk)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def big_mail(**kwargs: Any) -> bytes:
    """Above `[parse] inline_max_size`, so a worker parses it."""
    return crlf(make_lf_mail(body="The printer is on fire.\n" * 400, **kwargs))


# --- the pool ------------------------------------------------------------------------------


def test_a_stalled_worker_is_killed_at_the_deadline_and_the_pool_goes_on(
    stalling: None, tmp_path: Path
) -> None:
    stalled = big_mail(subject="stall", headers={parse_faults.STALL: str(tmp_path / "began")})
    dying = big_mail(subject="die", headers={parse_faults.DIE: "now"})
    fine = [big_mail(subject=f"fine {i}") for i in range(4)]
    with ParsePool(workers=2, timeout=2.0) as pool:
        results = pool.parse_many([fine[0], stalled, fine[1], dying, fine[2]])
        assert [r.error for r in results] == [
            None,
            PARSE_TIMEOUT,
            None,
            "parser error: worker died (exit code 3)",
            None,
        ]
        assert [r.parsed.subject for r in results if r.parsed] == ["fine 0", "fine 1", "fine 2"]
        # the killed workers were replaced: the pool still parses, on both of them
        again = pool.parse_many(fine * 3)
        assert [r.parsed.subject for r in again if r.parsed] == [f"fine {i}" for i in range(4)] * 3


def test_small_mail_is_parsed_in_process_and_large_mail_by_a_worker(tmp_path: Path) -> None:
    small = crlf(make_lf_mail(subject="small"))
    with ParsePool(workers=1, timeout=5.0, inline_max_size=len(small)) as pool:
        assert pool.inline(small) and not pool.inline(big_mail())
        results = pool.parse_many([small, big_mail(subject="large"), b"\x00\x01 not a mail"])
    assert [r.parsed.subject if r.parsed else r.error for r in results] == [
        "small",
        "large",
        results[2].error,
    ]
    assert results[2].error is not None and results[2].error.startswith("unparseable")


def test_a_batch_chunk_over_the_deadline_is_parsed_again_mail_by_mail(
    stalling: None, tmp_path: Path
) -> None:
    mails = [big_mail(subject=f"fine {i}") for i in range(8)]
    mails[5] = big_mail(subject="stall", headers={parse_faults.STALL: str(tmp_path / "began")})
    with ParsePool(workers=2, timeout=2.0) as pool:
        results = pool.collect_batch(pool.submit_batch(mails))  # 4 chunks of 2
    assert [r.parsed.subject if r.parsed else r.error for r in results] == [
        *(f"fine {i}" for i in range(5)),
        PARSE_TIMEOUT,
        "fine 6",
        "fine 7",
    ]


def test_parse_ahead_keeps_batches_and_order() -> None:
    small = [(crlf(make_lf_mail(subject=f"small {i}")), i) for i in range(3)]
    large = [(big_mail(subject=f"large {i}"), i) for i in range(3)]
    batches = [[small[0], large[0]], [large[1]], [small[1], large[2], small[2]]]
    with ParsePool(workers=2, timeout=30.0, inline_max_size=2048) as pool:
        pipelined = [
            (items, [r.parsed.subject for r in results or () if r.parsed])
            for items, results in parse_ahead(pool, batches)
        ]
        single = list(parse_ahead(pool, batches[:1]))
    assert [items for items, _ in pipelined] == batches
    assert [subjects for _, subjects in pipelined] == [
        ["small 0", "large 0"],
        ["large 1"],
        ["small 1", "large 2", "small 2"],
    ]
    assert [[r.parsed.subject for r in results or () if r.parsed] for _, results in single] == [
        ["small 0", "large 0"]
    ]
    assert [results for _, results in parse_ahead(None, batches)] == [None, None, None]


# --- through the listener ------------------------------------------------------------------


class Watchdog:
    """systemd's side of the watchdog: receives the daemon's WATCHDOG=1 pings as they come
    (a datagram socket nobody reads fills up and then blocks the sender)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.pings = 0
        self._open = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._open:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.pings += "WATCHDOG=1" in message.split("\n")

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self.sock.close()


@pytest.fixture
def daemon(
    tmp_path: Path, sqlite_url: str, stalling: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[InProcessDaemon, Watchdog, Path]]:
    watchdog = Watchdog(tmp_path)
    # a ping every 0.1 s asked of the daemon (this process)
    monkeypatch.setenv("NOTIFY_SOCKET", str(watchdog.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    config = write_config(
        tmp_path / "mailbridge.toml",
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        extra='[parse]\nworkers = 2\ntimeout = "3s"\n',
    )
    with InProcessDaemon(settings_from(config)) as running:
        yield running, watchdog, config
    watchdog.close()


def send(port: int, raw: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("carol@customer.example")
        smtp.rcpt("support@example.com")
        code, text = smtp.data(raw)
        return code, text.decode()


def test_a_stalling_mail_holds_neither_other_clients_nor_the_watchdog_and_is_quarantined(
    daemon: tuple[InProcessDaemon, Watchdog, Path], tmp_path: Path
) -> None:
    running, watchdog, config = daemon
    port = int(running.settings.smtp.listen.rsplit(":", 1)[1])
    began = tmp_path / "stall-began"
    bomb = big_mail(subject="the bomb", headers={parse_faults.STALL: str(began)})
    replies: dict[str, tuple[int, str]] = {}
    first = threading.Thread(target=lambda: replies.update(bomb=send(port, bomb)))
    first.start()
    deadline = time.monotonic() + 20
    while not began.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert began.exists(), "the worker never started on the bomb"
    pings_before = watchdog.pings

    # a second client, small mail and large (the other worker), while one is stuck on the first
    assert send(port, crlf(make_lf_mail(subject="small one")))[0] == 250
    assert first.is_alive(), "the first client was answered before the second"
    assert send(port, big_mail(subject="large one"))[0] == 250
    assert first.is_alive()

    first.join(30)
    assert replies["bomb"][0] == 250  # stored raw before the reply, like any quarantined mail
    pings = watchdog.pings - pings_before
    assert pings >= 5, f"{pings} watchdog pings while the bomb was parsed (one per 0.1 s asked)"

    with running.daemon.app.store.unit() as session:
        subjects = sorted(t.subject for t in repo.all_tickets(session))
        held = repo.list_quarantine(session, True, True)
        assert subjects == ["large one", "small one"]
        assert [(q.reason, q.message_id, q.size) for q in held] == [
            (PARSE_TIMEOUT, None, len(bomb))
        ]
    listing = CliRunner().invoke(cli, ["--config", str(config), "quarantine", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    entries = json.loads(listing.stdout)
    assert [e["reason"] for e in entries] == [PARSE_TIMEOUT]
    # retrying it from the command line is bounded by the same deadline
    retry = CliRunner().invoke(
        cli, ["--config", str(config), "quarantine", "retry", str(entries[0]["id"])]
    )
    assert retry.exit_code == 1 and PARSE_TIMEOUT in retry.stdout, retry.output
    # the worker was replaced: a large mail is still parsed by the pool
    assert send(port, big_mail(subject="after the bomb"))[0] == 250


# --- offline ingest -------------------------------------------------------------------------


def _mails() -> list[bytes]:
    """Threads within and across batches of 4, large and small mail, one that is not a mail."""
    mails: list[bytes] = []
    for n in range(6):
        first = (big_mail if n % 2 else make_lf_mail)(subject=f"Case {n}", sender=f"c{n}@ex.test")
        mails.append(first)
        mails.append(
            make_lf_mail(
                subject=f"Re: Case {n}", sender=f"c{n}@ex.test", in_reply_to=message_id_of(first)
            )
        )
    mails.insert(5, b"\x00\x01 not a mail at all")
    mails.append(mails[0])  # a duplicate
    return mails


def _ingest(tmp_path: Path, name: str, mails: list[bytes], workers: int) -> tuple[Any, ...]:
    folder = tmp_path / "mails"
    if not folder.exists():
        folder.mkdir()
        for i, raw in enumerate(mails):
            (folder / f"{i:03}.eml").write_bytes(raw)
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / name}.db"\nbatch_size = 4\n'
        f'[smtp]\naddresses = ["support@example.com"]\n[parse]\nworkers = {workers}\n'
        'inline_max_size = "1KB"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "ingest", "--json", str(folder)])
    assert result.exit_code == 0, result.output
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    tickets = CliRunner().invoke(cli, ["--config", str(config), "tickets", "--json"])
    listing = [
        {k: v for k, v in t.items() if k not in ("created_at", "updated_at")}
        for t in json.loads(tickets.stdout)
    ]
    return outcomes, listing


def test_ingest_decides_the_same_with_the_pool_as_without(tmp_path: Path) -> None:
    mails = _mails()
    without = _ingest(tmp_path, "in-process", mails, workers=0)
    with_pool = _ingest(tmp_path, "pool", mails, workers=2)
    assert with_pool == without
    outcomes = [o["outcome"] for o in with_pool[0]]
    assert outcomes.count("created") == 6 and outcomes.count("appended") == 6
    assert outcomes.count("quarantined") == 1 and outcomes[-1] == "duplicate"
