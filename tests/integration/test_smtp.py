"""The SMTP/LMTP listener against a real in-process daemon, spoken to with smtplib (SPEC 3, 4).

Each test starts `serve()` on a free 127.0.0.1 port (or a Unix socket) with a temp config.
"""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.servers.ports import free_port
from mailbridge.auth_users import hash_password
from mailbridge.storage import repo
from tests.helpers_daemon import (
    InProcessDaemon,
    make_cert,
    settings_from,
    write_config,
)
from tests.mail import make_mail as make_lf_mail
from tests.mail import message_id_of
from tests.smtp_client import RawClient

CUSTOMER = "carol@customer.example"
SUPPORT = "support@example.com"

Start = Callable[..., InProcessDaemon]


def make_mail(**kwargs: Any) -> bytes:
    """A test message with CRLF line ends, as every MTA sends it (bare LFs are refused)."""
    return make_lf_mail(**kwargs).replace(b"\n", b"\r\n")


@pytest.fixture
def start(tmp_path: Path, sqlite_url: str) -> Iterator[Start]:
    """start(smtp="...", extra="...", url=..., listen=...) -> a running in-process daemon."""
    running: list[InProcessDaemon] = []

    def make(
        smtp: str = "", extra: str = "", url: str | None = None, listen: str | None = None
    ) -> InProcessDaemon:
        listen = listen or f"127.0.0.1:{free_port()}"
        path = write_config(tmp_path / "mailbridge.toml", url or sqlite_url, listen, smtp, extra)
        daemon = InProcessDaemon(settings_from(path)).__enter__()
        running.append(daemon)
        return daemon

    yield make
    for daemon in running:
        daemon.stop()


def port_of(d: InProcessDaemon) -> int:
    return int(d.settings.smtp.listen.rsplit(":", 1)[1])


def client(d: InProcessDaemon, **kwargs: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port_of(d), timeout=10, **kwargs)
    smtp.ehlo("client.example")
    return smtp


def deliver(
    d: InProcessDaemon, raw: bytes, rcpts: tuple[str, ...] = (SUPPORT,), sender: str = CUSTOMER
) -> tuple[int, str]:
    """One transaction; the reply to DATA as (code, text)."""
    with client(d) as smtp:
        smtp.mail(sender)
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, reply = smtp.data(raw)
        return code, reply.decode()


def queue_id_of(reply: str | bytes) -> str:
    """The id in a 250 for stored mail; it never names the ticket (issue 14: numbers are guessable)."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    match = re.fullmatch(r"2\.0\.0 Ok: queued as ([0-9A-F]{10})", text)
    assert match, text
    return match.group(1)


def ticket_of(d: InProcessDaemon, reply: str | bytes, raw: bytes) -> int:
    """The ticket holding raw, found by its Message-ID; the reply must be a plain queue id."""
    queue_id_of(reply)
    with d.daemon.app.store.unit() as session:
        found = repo.tickets_for_message_ids(session, [message_id_of(raw).strip("<>")])
    assert len(found) == 1, found
    return next(iter(found.values()))


def counts(d: InProcessDaemon) -> dict[str, int]:
    with d.daemon.app.store.unit() as session:
        tickets = repo.all_tickets(session)
        messages = sum(len(received(session, t.number)) for t in tickets)
        quarantined = len(repo.list_quarantine(session, True, True))
        events = len(repo.all_events(session))
    return {
        "tickets": len(tickets),
        "messages": messages,
        "quarantine": quarantined,
        "events": events,
    }


def received(session: Any, number: int) -> list[Any]:
    """The ticket's messages that came in by mail (not our own notifications)."""
    return [m for m in repo.ticket_messages(session, number) if m.author_kind != "system"]


def status(d: InProcessDaemon, number: int) -> str:
    with d.daemon.app.store.unit() as session:
        ticket = repo.get_ticket(session, number)
        assert ticket is not None
        return ticket.status


# --- the basic contract, on SQLite and PostgreSQL ------------------------------------------


def test_new_mail_makes_a_ticket_and_a_reply_reopens_it(start: Start, db_url: str) -> None:
    d = start(url=db_url)
    first = make_mail(subject="Printer on fire")
    code, reply = deliver(d, first)
    assert code == 250 and "#" not in reply
    number = ticket_of(d, reply, first)
    assert status(d, number) == "new"

    d.daemon.app.actions.act(number, "resolve", "cli:test")
    answer = make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first))
    code, reply = deliver(d, answer)
    assert (code, ticket_of(d, reply, answer)) == (250, number)
    assert status(d, number) == "open"
    assert counts(d)["tickets"] == 1


def test_the_same_mail_twice_is_acknowledged_and_stored_once(start: Start) -> None:
    d = start()
    raw = make_mail()
    assert deliver(d, raw)[0] == 250
    code, reply = deliver(d, raw)  # the sender did not see our 250 and retried
    assert (code, reply) == (250, "2.0.0 already received")
    assert counts(d)["messages"] == 1


# --- recipients --------------------------------------------------------------------------


def test_unknown_recipient_is_refused_at_rcpt_never_relayed(start: Start) -> None:
    d = start()
    with client(d) as smtp:
        smtp.mail(CUSTOMER)
        for rcpt in ("sales@example.com", "victim@elsewhere.example", "support@example.com.evil"):
            code, text = smtp.rcpt(rcpt)
            assert code == 550 and text.startswith(b"5.1.1"), (rcpt, code, text)
        code, _ = smtp.rcpt("Support@Example.com")  # addresses compare case-insensitively
        assert code == 250
    assert counts(d)["messages"] == 0


def test_plus_token_address_of_a_ticket_is_accepted_and_threads(start: Start) -> None:
    d = start()
    first = make_mail(subject="first")
    number = ticket_of(d, deliver(d, first)[1], first)
    with d.daemon.app.store.unit() as session:
        token = repo.get_ticket(session, number).token  # type: ignore[union-attr]
    plus = f"support+{token}@example.com"
    second = make_mail(subject="no headers to thread by", to=plus)
    code, reply = deliver(d, second, rcpts=(plus,))
    assert (code, ticket_of(d, reply, second)) == (250, number)


def test_too_many_recipients_get_452(start: Start) -> None:
    d = start(smtp="max_recipients = 2")
    with client(d) as smtp:
        smtp.mail(CUSTOMER)
        assert smtp.rcpt(SUPPORT)[0] == 250
        assert smtp.rcpt("support+aaaaaaaaaaaaaaaa@example.com")[0] == 250
        code, text = smtp.rcpt(SUPPORT)
        assert (code, text[:5]) == (452, b"4.5.3")


def test_null_sender_is_accepted(start: Start) -> None:
    d = start()
    with client(d) as smtp:
        assert smtp.mail("<>")[0] == 250
        assert smtp.rcpt(SUPPORT)[0] == 250
        code, _ = smtp.data(make_mail(sender="MAILER-DAEMON@mx.example", subject="Undelivered"))
    assert code == 250
    assert counts(d)["tickets"] == 0  # a bounce is not a ticket (SPEC 3), but it is kept


# --- limits ------------------------------------------------------------------------------


def test_size_is_advertised_and_enforced(start: Start) -> None:
    d = start(smtp='max_message_size = "4KB"')
    with client(d) as smtp:
        assert smtp.esmtp_features["size"] == "4096"
        code, text = smtp.mail(CUSTOMER, ["SIZE=100000"])  # declared too big: refused up front
        assert (code, text[:5]) == (552, b"5.3.4")
        smtp.rset()
        smtp.mail(CUSTOMER)
        smtp.rcpt(SUPPORT)
        code, text = smtp.data(make_mail(body="x" * 70 + "\n" * 100))  # small enough
        assert code == 250
        smtp.mail(CUSTOMER)
        smtp.rcpt(SUPPORT)
        code, text = smtp.data(make_mail(body=("y" * 70 + "\n") * 100))  # undeclared and too big
        assert (code, text[:5]) == (552, b"5.3.4")
        assert smtp.noop()[0] == 250  # the session goes on
    assert counts(d)["messages"] == 1


def test_too_many_header_fields_and_long_lines_are_refused(start: Start) -> None:
    d = start()
    headers = {f"X-Filler-{i}": "x" for i in range(1001)}
    code, reply = deliver_raw(d, make_mail(headers=headers))
    assert (code, reply[:5]) == (552, "5.3.4")
    hops = {"Received": "from a by b"}
    raw = b"".join(
        b"Received: from hop%d by hop%d\r\n" % (i, i + 1) for i in range(101)
    ) + make_mail(headers=hops)
    code, reply = deliver_raw(d, raw)
    assert (code, reply[:5]) == (554, "5.4.6")
    code, reply = deliver_raw(d, make_mail().replace(b"Hello,", b"Hello," + b"z" * 9000))
    assert (code, reply[:5]) == (500, "5.6.0")
    assert counts(d)["messages"] == 0


def deliver_raw(d: InProcessDaemon, raw: bytes) -> tuple[int, str]:
    with client(d) as smtp:
        smtp.mail(CUSTOMER)
        smtp.rcpt(SUPPORT)
        code, text = smtp.data(raw)
        return code, text.decode()


def test_connections_per_client_are_limited(start: Start) -> None:
    d = start(smtp="max_connections_per_client = 2")
    first, second = client(d), client(d)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port_of(d), timeout=10)
    assert refused.value.smtp_code == 421 and refused.value.smtp_error.startswith(b"4.7.0")
    first.quit()
    third = _retry_connect(d)  # the slot is free again once the first one has gone
    assert third.noop()[0] == 250
    for smtp in (second, third):
        smtp.quit()


def _retry_connect(d: InProcessDaemon) -> smtplib.SMTP:
    for _ in range(50):
        try:
            return client(d)
        except smtplib.SMTPConnectError:
            import time

            time.sleep(0.02)
    raise AssertionError("connection slot was never released")


def test_total_connection_limit_refuses_the_next_with_421(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailbridge.smtp")
    d = start(smtp="max_connections = 3")
    held = [client(d) for _ in range(3)]
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port_of(d), timeout=10)
        assert refused.value.smtp_code == 421
        assert refused.value.smtp_error.startswith(b"4.7.0 Too many connections")
    assert all(smtp.noop()[0] == 250 for smtp in held)  # those already in are not disturbed
    held.pop().quit()
    held.append(_retry_connect(d))  # a free slot is taken again
    for smtp in held:
        smtp.quit()
    reached = [r for r in caplog.records if "max_connections = 3 reached" in r.getMessage()]
    assert len(reached) == 1  # one line when the limit is hit, not one per refused connection
    exposition = d.daemon.app.metrics.exposition().decode()
    assert 'mailbridge_smtp_connections_refused_total{limit="total"} 2.0' in exposition


def test_per_client_limit_counts_each_ipv4_address_apart(start: Start) -> None:
    d = start(smtp="max_connections_per_client = 2")

    def connect(source: str) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port_of(d), timeout=10, source_address=(source, 0))

    held = [connect("127.0.0.2"), connect("127.0.0.2")]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect("127.0.0.2")
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.7.0 Too many connections from your address")
    held.append(connect("127.0.0.3"))  # another address has its own allowance
    assert held[-1].noop()[0] == 250
    for smtp in held:
        smtp.quit()


class DataClient(RawClient):
    """Bytes on a socket, at the pace the test chooses."""

    def __init__(self, d: InProcessDaemon) -> None:
        super().__init__(port_of(d))

    def start_data(self) -> None:
        assert self.reply().startswith(b"220")
        assert self.command("EHLO client.example").startswith(b"250")
        assert self.command(f"MAIL FROM:<{CUSTOMER}>").startswith(b"250")
        assert self.command(f"RCPT TO:<{SUPPORT}>").startswith(b"250")
        assert self.command("DATA").startswith(b"354")


TIMEOUTS = 'timeout = "2s"\ndata_timeout = "1s"\ndata_min_rate = 100'
PAUSE = 0.2  # well under the 2 s idle timeout, so only a real stall can trip it


def test_slow_but_steady_sender_delivers_past_the_idle_timeout(start: Start) -> None:
    d = start(smtp=TIMEOUTS)
    raw = make_mail(body=("steady line of text " * 3 + "\n") * 40)  # about 2.5 KB
    chunks = [raw[i : i + 200] for i in range(0, len(raw), 200)]
    assert len(chunks) * PAUSE > 2.4  # the whole DATA lasts longer than the idle timeout
    slow = DataClient(d)
    try:
        slow.start_data()
        for chunk in chunks:  # 1,000 bytes/s: above data_min_rate, so DATA may last this long
            slow.sock.sendall(chunk)
            time.sleep(PAUSE)
        slow.sock.sendall(b".\r\n")
        reply = slow.reply()
    finally:
        slow.close()
    assert reply.startswith(b"250 ")
    assert ticket_of(d, reply[4:].strip(), raw) == 1


def test_stalled_and_trickling_clients_are_cut(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailbridge.smtp")
    d = start(smtp=TIMEOUTS)
    raw = make_mail()
    stalled, trickler = DataClient(d), DataClient(d)
    try:
        assert stalled.reply().startswith(b"220")
        assert stalled.command("EHLO client.example").startswith(b"250")
        stalled.sock.sendall(f"MAIL FROM:<{CUSTOMER}>\r\nRCPT TO:<sup".encode())  # then nothing
        assert stalled.reply().startswith(b"250")
        trickler.start_data()
        # never silent for long, but 5 bytes/s is below data_min_rate: DATA gets 1 s + 1/20 s
        with pytest.raises(OSError):  # the 421 and the close arrive while it still sends
            for byte in raw:
                trickler.sock.sendall(bytes([byte]))
                time.sleep(PAUSE)
        assert trickler.reply().startswith(b"421 4.4.2")
        assert stalled.reply().startswith(b"421 4.4.2")
        with pytest.raises(ConnectionError):
            stalled.reply()  # and closed
    finally:
        stalled.close()
        trickler.close()
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing")]
    assert sorted(reason.rsplit(": ", 1)[1] for reason in reasons) == [
        "DATA too slow",
        "idle timeout",
    ]
    assert counts(d)["messages"] == 0


def test_running_out_of_descriptors_is_logged_once_not_per_accept(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`mailbridge run` under a tiny descriptor limit, then more clients than it can accept.

    asyncio retries a failed accept() every second and logs each with a traceback (issue 14:
    MB/s of them at 1,024 descriptors); one line when it starts and one when it ends must do.
    """
    import os
    import resource
    import signal
    import subprocess
    import sys

    from tests.helpers_daemon import REPO, NotifySocket

    limit, port = 64, free_port()
    config = write_config(
        tmp_path / "mailbridge.toml",
        sqlite_url,
        f"127.0.0.1:{port}",
        "max_connections_per_client = 1000",
    )
    notify = NotifySocket(tmp_path)
    log_path = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
    env.update(NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(REPO))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def wait_log(text: str) -> str:
        for _ in range(200):
            log = log_path.read_text(errors="replace")
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never logged:\n{log}")

    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailbridge", "--config", str(config), "run"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_limit,
        )
    clients: list[socket.socket] = []
    try:
        assert notify.wait_for("READY=1", 30, alive=lambda: proc.poll() is None)
        assert "max_connections = 1000 needs about" in log_path.read_text()
        clients = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(limit + 20)]
        wait_log("cannot accept connections")
        time.sleep(2.5)  # asyncio has retried (and failed) at least twice more by now
        log = log_path.read_text(errors="replace")
        assert log.count("cannot accept connections") == 1
        assert "out of system resource" not in log and "Traceback" not in log
        for sock in clients:
            sock.close()
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:  # served again
            assert smtp.noop()[0] == 250
        log = wait_log("accepting connections again")
        assert log.count("accepting connections again") == 1
    finally:
        for sock in clients:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        notify.close()


# --- storage trouble ---------------------------------------------------------------------


def test_storage_failure_answers_451_and_leaves_no_rows(start: Start) -> None:
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    d = start()
    sessions = d.daemon.app.store.sessions

    def disk_full(session: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("database or disk is full"))

    event.listen(sessions, "before_commit", disk_full)
    raw = make_mail()
    try:
        code, reply = deliver(d, raw)
    finally:
        event.remove(sessions, "before_commit", disk_full)
    assert (code, reply[:5]) == (451, "4.3.0")
    assert counts(d) == {"tickets": 0, "messages": 0, "quarantine": 0, "events": 0}
    code, reply = deliver(d, raw)  # the sending MTA retries later, and then it works
    assert code == 250 and counts(d)["tickets"] == 1


def test_a_bug_in_the_commit_answers_451_and_the_next_mail_still_commits(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = start()
    ingestor = d.daemon.app.ingestor
    real = ingestor.accept_each

    def broken(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(ingestor, "accept_each", real)  # only this once
        raise RuntimeError("a bug outside the failure ladder")

    monkeypatch.setattr(ingestor, "accept_each", broken)
    code, reply = deliver(d, make_mail())
    assert (code, reply[:5]) == (451, "4.3.0")  # the sender keeps the mail, nobody hangs
    assert counts(d)["tickets"] == 0
    code, reply = deliver(d, make_mail())  # the committer lives on
    assert code == 250 and counts(d)["tickets"] == 1


# --- TLS and AUTH ------------------------------------------------------------------------


def tls_client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
    return context


def test_starttls_with_a_test_certificate_and_require_tls(start: Start, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    d = start(smtp=f'tls_cert = "{cert}"\ntls_key = "{key}"\nrequire_tls = true')
    with client(d) as smtp:
        assert smtp.has_extn("starttls")
        code, text = smtp.mail(CUSTOMER)
        assert (code, text[:5]) == (530, b"5.7.0")
        smtp.starttls(context=tls_client_context())
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")
        assert isinstance(smtp.sock, ssl.SSLSocket)
        smtp.mail(CUSTOMER)
        smtp.rcpt(SUPPORT)
        raw = make_mail()
        code, reply = smtp.data(raw)
    assert (code, ticket_of(d, reply, raw)) == (250, 1)


@pytest.fixture
def fast_auth_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailbridge.sources.smtp.auth.AUTH_FAILURE_DELAY", 0.0)


def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-users"
    path.write_text(f"# agents\nalice@example.com:{hash_password('wonderland')}\n")
    return path


def test_auth_only_after_starttls_and_agent_mail_counts_as_agent(
    start: Start, tmp_path: Path, fast_auth_failures: None
) -> None:
    cert, key = make_cert(tmp_path)
    users = users_file(tmp_path)
    d = start(smtp=f'tls_cert = "{cert}"\ntls_key = "{key}"\nauth_users_file = "{users}"')
    customer_mail = make_mail(subject="Help")
    number = ticket_of(d, deliver(d, customer_mail)[1], customer_mail)
    agent_reply = make_mail(
        sender="Alice <alice@example.com>",
        to=CUSTOMER,
        cc=SUPPORT,
        subject="Re: Help",
        in_reply_to=message_id_of(customer_mail),
        body="Turn it off and on again.\n",
    )
    with client(d) as smtp:
        assert not smtp.has_extn("auth")  # not offered in cleartext
        code, text = smtp.docmd(
            "AUTH", "PLAIN " + base64.b64encode(b"\0alice@example.com\0wonderland").decode()
        )
        assert (code, text[:6]) == (538, b"5.7.11")
        smtp.starttls(context=tls_client_context())
        smtp.ehlo("client.example")
        assert "PLAIN" in smtp.esmtp_features["auth"] and "LOGIN" in smtp.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            smtp.login("alice@example.com", "looking-glass")
        assert wrong.value.smtp_code == 535
        assert smtp.login("alice@example.com", "wonderland")[0] == 235
        smtp.mail("alice@example.com")
        smtp.rcpt(SUPPORT)
        code, reply = smtp.data(agent_reply)
    assert (code, ticket_of(d, reply, agent_reply)) == (250, number)
    assert status(d, number) == "answered"
    with d.daemon.app.store.unit() as session:
        kinds = [m.author_kind for m in received(session, number)]
    assert kinds == ["customer", "agent"]


def test_agent_from_without_auth_is_customer_mail(start: Start) -> None:
    d = start()
    first = make_mail(subject="Help")
    number = ticket_of(d, deliver(d, first)[1], first)
    forged = make_mail(
        sender="alice@example.com",
        subject="Re: Help",
        in_reply_to=message_id_of(first),
        body="#close\n",
    )
    assert deliver(d, forged, sender="alice@example.com")[0] == 250
    assert status(d, number) != "closed"


def test_login_mechanism_and_cleartext_auth_on_loopback_when_allowed(
    start: Start, tmp_path: Path, fast_auth_failures: None
) -> None:
    users = users_file(tmp_path)
    d = start(smtp=f'auth_users_file = "{users}"\nauth_require_tls = false')
    with client(d) as smtp:
        assert smtp.has_extn("auth")  # 127.0.0.1 is loopback: cleartext AUTH allowed here
        smtp.user, smtp.password = "ALICE@example.com", "wonderland"
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235


def plain(smtp: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return smtp.docmd("AUTH", f"PLAIN {blob}")


def test_cleartext_auth_is_offered_and_accepted_only_on_this_host(tmp_path: Path) -> None:
    """aiosmtpd decides once per connection object, before the peer is known, whether AUTH needs
    TLS; we decide per peer (cleartext AUTH, where allowed at all, only on loopback). No client
    off this host can connect here over TCP, so the protocol is driven through a transport that
    reports the peer; an aiosmtpd that changed how AUTH is refused would fail here first."""
    import asyncio

    from mailbridge.config import parse_settings
    from mailbridge.sources.smtp.listener import ListenerConfig, SmtpListener
    from mailbridge.sources.smtp.protocol import Connection
    from tests.smtp_client import converse

    config = f'[smtp]\nauth_users_file = "{users_file(tmp_path)}"\nauth_require_tls = false\n'
    settings = parse_settings(config, "mailbridge.toml")
    auth = b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0wonderland")

    async def replies_to(peer: tuple[str, int]) -> list[str]:
        config = ListenerConfig.from_settings(settings)
        listener = SmtpListener(None, config)  # type: ignore[arg-type]  # no mail is sent
        commands = [auth, b"EHLO client.example", b"HELP AUTH", auth]
        return await converse(Connection(listener, listener.config), peer, commands)

    _, early, ehlo, help_auth, login = asyncio.run(replies_to(("203.0.113.9", 25)))
    assert early.startswith("503 ")  # EHLO first: aiosmtpd's checks keep their order
    assert ehlo.startswith("250-") and "AUTH" not in ehlo
    assert help_auth == "250 Syntax: AUTH <mechanism>"
    assert login.startswith("538 5.7.11 ")
    _, _, ehlo, _, login = asyncio.run(replies_to(("127.0.0.1", 4000)))
    assert "250-AUTH LOGIN PLAIN" in ehlo.split("\r\n")
    assert login.startswith("235 ")


def test_password_guessing_is_locked_out_per_login_and_per_client(
    start: Start, tmp_path: Path, fast_auth_failures: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailbridge.smtp")
    users = users_file(tmp_path)
    d = start(
        smtp=f'auth_users_file = "{users}"\nauth_require_tls = false\n'
        'auth_max_failures = 3\nauth_lockout = "3s"'
    )  # failures are forgotten after a quiet `auth_lockout`: 3 s outlasts a hash on a busy host

    def connect(source: str) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", port_of(d), timeout=10, source_address=(source, 0))
        smtp.ehlo("client.example")
        return smtp

    first, second, third = connect("127.0.0.2"), connect("127.0.0.3"), connect("127.0.0.4")
    # three wrong passwords for alice from two addresses: alice is locked out everywhere...
    assert plain(first, "alice@example.com", "guess-1")[0] == 535
    assert plain(first, "alice@example.com", "guess-2")[0] == 535
    assert plain(second, "alice@example.com", "guess-3")[0] == 535
    code, text = plain(third, "alice@example.com", "wonderland")
    assert (code, text) == (454, b"4.7.0 Too many failed logins, try again later")
    # ...and the address that guessed three times is locked out whatever login it tries
    assert plain(first, "bob@example.com", "guess-4")[0] == 535
    assert plain(first, "carol@example.com", "anything")[0] == 454
    assert plain(second, "bob@example.com", "guess-5")[0] == 535  # not locked: one of its own

    exposition = d.daemon.app.metrics.exposition().decode()
    assert "mailbridge_smtp_auth_failures_total 5.0" in exposition
    assert 'mailbridge_smtp_auth_lockouts_total{scope="login"} 1.0' in exposition
    assert 'mailbridge_smtp_auth_lockouts_total{scope="client"} 1.0' in exposition
    lockouts = sorted(
        r.getMessage().split(" for ")[0]
        for r in caplog.records
        if r.getMessage().startswith("auth lockout")
    )
    assert lockouts == ["auth lockout client=127.0.0.2", "auth lockout login=alice@example.com"]

    # after the cooldown the right password works again; until then it is refused, not checked
    codes = []
    for _ in range(100):
        code, _ = plain(third, "alice@example.com", "wonderland")
        codes.append(code)
        if code != 454:
            break
        time.sleep(0.1)
    assert codes[-1] == 235 and set(codes[:-1]) <= {454}
    for smtp in (first, second, third):
        smtp.close()


def test_password_hashing_does_not_wait_for_the_database_threads(
    start: Start, tmp_path: Path
) -> None:
    """Logins are checked on a thread of their own: a busy default pool (commits) cannot delay them."""
    import asyncio
    import threading

    users = users_file(tmp_path)
    d = start(smtp=f'auth_users_file = "{users}"\nauth_require_tls = false')
    gate = threading.Event()

    def occupy() -> None:
        assert d.loop is not None
        for _ in range(64):  # more than the default executor has threads
            asyncio.get_running_loop().run_in_executor(None, gate.wait)

    try:
        d.call(occupy)
        with client(d) as smtp:
            assert smtp.login("alice@example.com", "wonderland")[0] == 235
    finally:
        gate.set()


def test_peers_are_described_and_only_loopback_counts_as_local() -> None:
    from mailbridge.sources.smtp.protocol import describe_peer

    assert describe_peer(("127.0.0.1", 4000)) == ("127.0.0.1:4000", "127.0.0.1", True)
    assert describe_peer(("::1", 25, 0, 0)) == ("[::1]:25", "::/64", True)
    assert describe_peer(("203.0.113.9", 25)) == ("203.0.113.9:25", "203.0.113.9", False)
    assert describe_peer("") == ("unix", None, True)
    # a dual-stack listener sees IPv4 clients as mapped addresses: still one IPv4 address each
    mapped = describe_peer(("::ffff:127.0.0.1", 25, 0, 0))
    assert mapped == ("[::ffff:127.0.0.1]:25", "127.0.0.1", True)


def test_ipv6_clients_share_a_limit_per_64() -> None:
    """One host gets a /64 to pick addresses from: it must not get a fresh limit per address.

    The listener test for per-client limits runs over IPv4 (127.0.0.2/3): this machine cannot
    source connections from several IPv6 addresses, so the IPv6 bucketing is checked here.
    """
    from mailbridge.sources.smtp.protocol import describe_peer

    def bucket(host: str) -> str | None:
        return describe_peer((host, 25, 0, 0))[1]

    same = {bucket("2001:db8:1:2::5"), bucket("2001:db8:1:2:ffff:ffff:ffff:fffe")}
    assert same == {"2001:db8:1:2::/64"}
    assert bucket("2001:db8:1:3::5") == "2001:db8:1:3::/64"
    assert bucket("fe80::1%eth0") == "fe80::/64"


# --- LMTP and Unix sockets ---------------------------------------------------------------


def lmtp_deliver(smtp: smtplib.LMTP, raw: bytes, rcpts: list[str]) -> list[tuple[int, bytes]]:
    """LMTP answers DATA once per recipient; smtplib reads only the first reply."""
    smtp.mail(CUSTOMER)
    for rcpt in rcpts:
        assert smtp.rcpt(rcpt)[0] == 250
    replies = [smtp.data(raw)]
    replies += [smtp.getreply() for _ in rcpts[1:]]
    return replies


def test_lmtp_answers_per_recipient(start: Start) -> None:
    d = start(smtp='mode = "lmtp"\nmax_message_size = "4KB"')
    with smtplib.LMTP("127.0.0.1", port_of(d), timeout=10) as smtp:
        assert smtp.ehlo("mx.example")[0] == 250  # smtplib.LMTP sends LHLO
        assert smtp.docmd("EHLO", "mx.example")[0] == 500
        rcpts = [SUPPORT, "support+aaaaaaaaaaaaaaaa@example.com"]
        raw = make_mail()
        replies = lmtp_deliver(smtp, raw, rcpts)
        assert [code for code, _ in replies] == [250, 250]
        queued = [text.rsplit(b" ", 1)[0] for _, text in replies]  # each ends in its recipient
        assert queued[0] == queued[1] and ticket_of(d, queued[0], raw) == 1
        assert replies[1][1].endswith(b"<support+aaaaaaaaaaaaaaaa@example.com>")
        replies = lmtp_deliver(smtp, make_mail(body=("y" * 70 + "\n") * 100), rcpts)
        assert [(code, text[:5]) for code, text in replies] == [(552, b"5.3.4")] * 2
        assert smtp.noop()[0] == 250  # nothing left unread: the session is in step
    assert counts(d)["messages"] == 1


def test_lmtp_on_a_unix_socket(start: Start, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "lmtp.sock"
    d = start(smtp='mode = "lmtp"', listen=f"unix:{sock}")
    assert sock.is_socket()
    with smtplib.LMTP(str(sock), timeout=10) as smtp:
        smtp.ehlo("mx.example")
        raw = make_mail()
        [(code, text)] = lmtp_deliver(smtp, raw, [SUPPORT])
    assert text.endswith(b" <support@example.com>")
    assert (code, ticket_of(d, text.rsplit(b" ", 1)[0], raw)) == (250, 1)
    d.stop()
    assert not sock.exists()  # removed on a clean stop


# --- load, reload, stop ------------------------------------------------------------------


def test_500_messages_over_20_connections_are_all_stored_once(start: Start) -> None:
    d = start()
    mails = [make_mail(sender=f"c{i}@customer.example", subject=f"load {i}") for i in range(500)]

    def connection(batch: list[bytes]) -> list[int]:
        codes = []
        with client(d) as smtp:
            for raw in batch:
                smtp.mail(CUSTOMER)
                smtp.rcpt(SUPPORT)
                codes.append(smtp.data(raw)[0])
        return codes

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(connection, [mails[i::20] for i in range(20)]))
    assert sorted(code for codes in results for code in codes) == [250] * 500
    with d.daemon.app.store.unit() as session:
        tickets = repo.all_tickets(session)
        ids = [m.message_id for t in tickets for m in received(session, t.number)]
    assert len(tickets) == 500
    assert len(ids) == 500 and len(set(ids)) == 500
    assert {f"<{i}>" for i in ids} == {message_id_of(raw) for raw in mails}


def test_reload_takes_new_addresses_without_dropping_sessions(start: Start, tmp_path: Path) -> None:
    d = start()
    with client(d) as smtp:
        smtp.mail(CUSTOMER)
        assert smtp.rcpt("help@example.com")[0] == 550
        path = tmp_path / "mailbridge.toml"
        path.write_text(
            path.read_text().replace(
                'addresses = ["support@example.com"]',
                'addresses = ["support@example.com", "help@example.com"]',
            )
        )
        assert d.call(d.daemon.reload, settings_from(path)) is True
        assert smtp.rcpt("help@example.com")[0] == 250  # the same session, the new address
        assert smtp.data(make_mail(to="help@example.com"))[0] == 250


def test_reload_with_a_broken_users_file_keeps_the_running_config(
    start: Start, tmp_path: Path
) -> None:
    users = users_file(tmp_path)
    d = start(smtp=f'auth_users_file = "{users}"\nauth_require_tls = false')
    path = tmp_path / "mailbridge.toml"
    path.write_text(
        path.read_text().replace(
            'addresses = ["support@example.com"]', 'addresses = ["help@example.com"]'
        )
    )
    users.write_text("alice@example.com:plaintext-password\n")
    assert d.call(d.daemon.reload, settings_from(path)) is False
    assert deliver(d, make_mail())[0] == 250  # support@ still accepted: nothing was applied


def test_stop_closes_idle_sessions_with_421(start: Start) -> None:
    d = start()
    idle = client(d)
    d.stop()
    code, text = idle.noop()  # the 421 was sent unprompted; it is the next reply smtplib reads
    assert (code, text[:5]) == (421, b"4.3.2")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        idle.noop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(d)), timeout=2).close()


# --- the users file ----------------------------------------------------------------------


def test_users_file_hashes_verify_and_bad_lines_are_named(tmp_path: Path) -> None:
    import hashlib

    from mailbridge.auth_users import load_users, parse_users
    from mailbridge.errors import ConfigError

    salt = "pepper"
    digest = base64.b64encode(hashlib.pbkdf2_hmac("sha256", b"s3cret", salt.encode(), 1000, 64))
    text = f"alice@example.com:{hash_password('wonderland')}\nBob@Example.com:pbkdf2_sha256$1000${salt}${digest.decode()}\n"
    users = parse_users(text)
    assert users.verify("ALICE@example.com", "wonderland") and not users.verify(
        "alice@example.com", "x"
    )
    assert users.verify("bob@example.com", "s3cret")
    assert not users.verify("mallory@example.com", "wonderland")
    with pytest.raises(ConfigError) as bad:
        parse_users("# ok\nalice:md5$abc\nnocolon\nbob:scrypt$1$2\n", "users")
    assert bad.value.problems == [
        "users:2: auth_users_file: unknown hash scheme (use scrypt$... or pbkdf2_sha256$...)",
        "users:3: auth_users_file: expected login:hash",
        "users:4: auth_users_file: scrypt hash must read scrypt$N$salt$r$p$hash",
    ]
    with pytest.raises(ConfigError):
        load_users(tmp_path / "missing")


def test_users_file_helper_prints_a_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from mailbridge.auth_users import main, parse_users

    monkeypatch.setattr("sys.stdin", io.StringIO("wonderland\n"))
    assert main(["Alice@example.com"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("alice@example.com:scrypt$")
    assert parse_users(line).verify("alice@example.com", "wonderland")
