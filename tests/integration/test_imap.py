"""IMAP pollers against a real, private Dovecot: tickets, after-actions, crashes, IDLE, outages, leases."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailbridge import node
from mailbridge.app import App
from mailbridge.errors import ImapError
from mailbridge.sources.imap.poller import FolderPoller, watches
from mailbridge.sources.imap.pollers import ImapConfig, ImapPollers
from mailbridge.sources.imap.session import ImapSession
from mailbridge.storage import repo
from tests.mail import make_mail, message_id_of

if TYPE_CHECKING:
    from tests.fixtures.dovecot import DovecotServer

# registered as a plugin, not imported here, so pytest can rewrite its asserts
pytest_plugins = ("tests.fixtures.dovecot",)

pytestmark = pytest.mark.dovecot
MakeApp = Callable[..., App]


def account_toml(server: DovecotServer, **options: str | None) -> str:
    """An [[imap]] account on `server`; options are TOML values, None leaves a key out."""
    settings = {
        "name": '"support"',
        "host": '"127.0.0.1"',
        "port": str(server.port),
        "tls": '"none"',
        "username": '"support@example.com"',
        "password_env": '"MB_TEST_IMAP_PASSWORD"',
        "after": '"seen"',
        "poll_interval": '"30s"',
        **options,
    }
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items() if value is not None)
    return f"[[imap]]\n{lines}\n"


def imap_toml(server: DovecotServer, cluster: str = "", **options: str | None) -> str:
    return f"{account_toml(server, **options)}\n[cluster]\n{cluster}\n"


@pytest.fixture(autouse=True)
def imap_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.dovecot import PASSWORD

    monkeypatch.setenv("MB_TEST_IMAP_PASSWORD", PASSWORD)


def poll_once(app: App) -> None:
    watch = watches(app.settings.imap[0])[0]
    FolderPoller(app, watch, "node-test", app.settings.cluster.lease_ttl).poll_once()


def tickets(app: App) -> list[tuple[int, str, int]]:
    """(number, status, messages other than our own notifications) per ticket."""
    with app.store.unit() as session:
        found = [(t.number, t.status) for t, _ in repo.list_tickets(session)]
    return [(number, status, len(messages_of(app, number))) for number, status in found]


def customers(app: App) -> list[str]:
    with app.store.unit() as session:
        return [t.customer for t, _ in repo.list_tickets(session)]


def messages_of(app: App, number: int) -> list[Any]:
    with app.store.unit() as session:
        found = repo.ticket_messages(session, number)
    return [m for m in found if m.author_kind != "system"]


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s: {check}")
        await asyncio.sleep(0.05)


def running(pollers: ImapPollers, account: str = "support") -> bool:
    return bool(pollers.status().get(account, {}).get("ok"))


def with_pollers(app: App, scenario: Callable[[ImapPollers], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        pollers = ImapPollers(app, ImapConfig.from_settings(app.settings), backoff=(0.1, 0.5), **kw)
        await pollers.start()
        try:
            await eventually(lambda: running(pollers))
            await scenario(pollers)
        finally:
            await pollers.stop()

    asyncio.run(main())


# --- tickets and after-actions -----------------------------------------------------------


def test_mail_becomes_a_ticket_and_a_reply_threads_onto_it(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot))
    first = make_mail()
    dovecot.append(first)
    poll_once(app)
    dovecot.append(make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first)))
    poll_once(app)

    assert [(number, count) for number, _, count in tickets(app)] == [(1, 2)]
    assert all("\\Seen" in flags for flags in dovecot.messages().values())


@pytest.mark.parametrize("after", ["move:Processed", "delete"])
def test_move_and_delete_after_actions(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str, after: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, after=f'"{after}"'))
    for n in range(3):
        dovecot.append(make_mail(sender=f"c{n}@customer.example"))
    poll_once(app)

    assert len(tickets(app)) == 3
    assert dovecot.messages("INBOX") == {}
    assert len(dovecot.messages("Processed")) == (3 if after.startswith("move") else 0)


def test_crash_between_commit_and_after_action_ends_as_a_duplicate(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot))
    uid = dovecot.append(make_mail())

    def crash(self: FolderPoller, session: Any, uids: list[int]) -> None:
        raise ImapError("simulated crash after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(FolderPoller, "_after", crash)
        with pytest.raises(ImapError):
            poll_once(app)
    assert len(tickets(app)) == 1
    assert "\\Seen" not in dovecot.messages()[uid]

    poll_once(app)  # the restart: the same mail again

    assert [(n, count) for n, _, count in tickets(app)] == [(1, 1)]
    assert "\\Seen" in dovecot.messages()[uid]


def test_uidvalidity_change_rescans_without_duplicates(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    with dovecot.client() as client:
        client.create_folder("Support")
    app = make_app(sqlite_url, imap_toml(dovecot, folder='"Support"'))
    mails = [make_mail(sender=f"c{n}@customer.example") for n in range(2)]
    for raw in mails:
        dovecot.append(raw, "Support")
    poll_once(app)
    before = dovecot.uidvalidity("Support")

    dovecot.recreate_folder("Support")
    for raw in [*mails, make_mail(sender="new@customer.example")]:
        dovecot.append(raw, "Support")
    poll_once(app)

    assert dovecot.uidvalidity("Support") != before
    assert len(tickets(app)) == 3
    assert all("\\Seen" in flags for flags in dovecot.messages("Support").values())


def test_poison_message_is_quarantined_and_the_next_one_ingested(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot))
    dovecot.append(b"this is not a mail at all\r\n")
    dovecot.append(make_mail())
    poll_once(app)

    with app.store.unit() as session:
        held = repo.list_quarantine(session, include_ignored=False, include_released=False)
        assert [q.reason.split(":")[0] for q in held] == ["unparseable"]
    assert len(tickets(app)) == 1
    assert all("\\Seen" in flags for flags in dovecot.messages().values())


# --- folder names under the server's namespace (RFC 2342) ----------------------------------


@pytest.mark.parametrize(
    ("separator", "after", "lands_in"),
    [
        ("/", "move:Processed", "INBOX/Processed"),  # as Cyrus with unixhierarchysep presents it
        (".", "move:Processed", "INBOX.Processed"),  # as Courier and Cyrus present it
        (".", "move:INBOX/Done", "INBOX.Done"),  # written with `/`, created with the server's `.`
        ("/", "move:Done/2026", "INBOX/Done/2026"),  # created inside the personal namespace
    ],
)
def test_move_target_follows_the_servers_namespace_and_separator(
    dovecot_factory: Callable[..., DovecotServer],
    make_app: MakeApp,
    sqlite_url: str,
    separator: str,
    after: str,
    lands_in: str,
) -> None:
    server = dovecot_factory(separator=separator, prefix=f"INBOX{separator}")
    app = make_app(sqlite_url, imap_toml(server, after=f'"{after}"'))
    for n in range(2):
        server.append(make_mail(sender=f"c{n}@customer.example"))
    poll_once(app)

    assert len(tickets(app)) == 2
    assert server.messages("INBOX") == {}
    assert len(server.messages(lands_in)) == 2
    assert lands_in in server.folders()


def test_sent_folder_is_found_inside_the_servers_namespace(
    dovecot_factory: Callable[..., DovecotServer], make_app: MakeApp, sqlite_url: str
) -> None:
    server = dovecot_factory(prefix="INBOX/")
    assert "Sent" not in server.folders() and "INBOX/Sent" in server.folders()
    app = make_app(sqlite_url, imap_toml(server, sent_folder='"Sent"'))
    inbox, sent = (
        FolderPoller(app, w, "mb1", timedelta(seconds=30)) for w in watches(app.settings.imap[0])
    )
    question = make_mail()
    server.append(question)
    assert inbox.poll_once() and sent.poll_once()  # the Sent folder's first pass starts from now
    server.append(
        make_mail(
            sender="Alice Agent <alice@example.com>",
            to="carol@customer.example",
            subject="Re: Printer on fire",
            in_reply_to=message_id_of(question),
        ),
        "INBOX/Sent",
    )
    sent.poll_once()

    assert [status for _, status, _ in tickets(app)] == ["answered"]


def test_a_folder_that_cannot_be_created_is_reported_once_and_mail_stays(
    dovecot: DovecotServer,
    make_app: MakeApp,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Dovecot refuses names that begin with `~`, as another server may refuse any name
    app = make_app(sqlite_url, imap_toml(dovecot, after='"move:~Archive"', batch_size="1"))
    poller = FolderPoller(app, watches(app.settings.imap[0])[0], "mb1", timedelta(seconds=30))
    caplog.set_level(logging.INFO, "mailbridge.imap")
    for round_ in range(2):
        for n in range(2):
            dovecot.append(make_mail(sender=f"c{round_}{n}@customer.example"))
        poller.poll_once()

    assert len(tickets(app)) == 4
    assert [flags - {"\\Recent"} for flags in dovecot.messages("INBOX").values()] == [set()] * 4
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cannot create folder ~Archive (server said: [CANNOT] Invalid mailbox name" in warning
    assert "the server has: INBOX, Processed, Sent" in warning


def test_a_missing_sent_folder_names_the_servers_folders(
    dovecot_factory: Callable[..., DovecotServer], make_app: MakeApp, sqlite_url: str
) -> None:
    server = dovecot_factory(separator=".", prefix="INBOX.")
    app = make_app(sqlite_url, imap_toml(server, sent_folder='"Sent Items"'))
    sent = FolderPoller(app, watches(app.settings.imap[0])[1], "mb1", timedelta(seconds=30))
    with pytest.raises(ImapError) as failed:
        sent.poll_once()
    assert "folder Sent Items not found (tried Sent Items, INBOX.Sent Items)" in str(failed.value)
    assert "the server has: INBOX, INBOX.Processed, INBOX.Sent" in str(failed.value)


# --- the running component ---------------------------------------------------------------


def test_idle_delivers_new_mail_within_two_seconds(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, idle="true", poll_interval='"10m"'))

    async def scenario(pollers: ImapPollers) -> None:
        await asyncio.sleep(0.3)  # let the poller settle into IDLE
        started = time.monotonic()
        await asyncio.to_thread(dovecot.append, make_mail())
        await eventually(lambda: tickets(app), within=2.0)
        assert time.monotonic() - started < 2.0

        started = time.monotonic()
        await pollers.stop()  # interrupts the IDLE promptly, without cutting the socket
        assert time.monotonic() - started < 1.5

    with_pollers(app, scenario)


def test_mail_that_arrives_just_before_idle_wakes_it(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, idle="true"))
    session = ImapSession(app.settings.imap[0], "INBOX", readonly=False).open()
    try:
        first = dovecot.append(make_mail())
        session.select()
        assert session.search(["ALL"]) == [first]
        # after the search, before IDLE (the race of every pass): the server announces it in the
        # same packet as IDLE's continuation
        dovecot.append(make_mail(sender="next@customer.example"))
        assert session.wait(10.0, threading.Event(), lambda: True) == "mail"
    finally:
        session.close()


def test_server_outage_is_survived_without_a_restart(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot))

    async def scenario(pollers: ImapPollers) -> None:
        await asyncio.to_thread(dovecot.stop)
        await eventually(lambda: not running(pollers))
        assert "support" in (pollers.status()["support"]["last_error"] or "")

        await asyncio.to_thread(dovecot.start)
        await asyncio.to_thread(dovecot.append, make_mail())
        await eventually(lambda: tickets(app), within=10.0)
        await eventually(lambda: running(pollers))

    with_pollers(app, scenario)


def test_sent_folder_mail_from_an_agent_marks_the_ticket_answered(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, sent_folder='"Sent"'))
    question = make_mail()
    answer = make_mail(
        sender="Alice Agent <alice@example.com>",
        to="carol@customer.example",
        subject="Re: Printer on fire",
        body="Unplug it.\n",
        in_reply_to=message_id_of(question),
    )

    async def scenario(pollers: ImapPollers) -> None:
        assert pollers.status()["support"]["folders"] == {"INBOX": "active", "Sent": "active"}
        await asyncio.to_thread(dovecot.append, question)
        await eventually(lambda: tickets(app))
        await asyncio.to_thread(dovecot.append, answer, "Sent")
        await eventually(lambda: tickets(app)[0][1] == "answered")

    with_pollers(app, scenario)

    reply = messages_of(app, 1)[-1]
    assert (reply.direction, reply.author_kind) == ("outbound", "agent")
    assert [flags - {"\\Recent"} for flags in dovecot.messages("Sent").values()] == [set()]


def test_two_nodes_share_a_mailbox_through_the_lease(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str, clock: Any
) -> None:
    cluster = 'lease_ttl = "2s"'
    app_a = make_app(sqlite_url, imap_toml(dovecot, cluster=f'node_id = "a"\n{cluster}'))
    app_b = make_app(sqlite_url, imap_toml(dovecot, cluster=f'node_id = "b"\n{cluster}'))
    lease = "imap:support:INBOX"

    def owner() -> str | None:
        with app_a.store.unit() as session:
            found = repo.lease_holder(session, lease)
        return found and found[0]

    async def main() -> None:
        node_a = ImapPollers(app_a, ImapConfig.from_settings(app_a.settings), backoff=(0.1, 0.5))
        node_b = ImapPollers(app_b, ImapConfig.from_settings(app_b.settings), backoff=(0.1, 0.5))
        await node_a.start()
        await eventually(lambda: node_a.status()["support"]["folders"]["INBOX"] == "active")
        await node_b.start()
        try:
            await eventually(lambda: node_b.status()["support"]["folders"]["INBOX"] == "standby")
            for n in range(5):
                await asyncio.to_thread(dovecot.append, make_mail(sender=f"c{n}@customer.example"))
            await eventually(lambda: len(tickets(app_a)) == 5)
            assert owner() == "a"

            # node a dies: it stops heartbeating without releasing the lease
            for poller in node_a.pollers():
                poller.lease.release = lambda: None  # type: ignore[method-assign]
            await node_a.stop()
            await asyncio.sleep(1.0)
            assert owner() == "a"  # b waits for the lease to expire
            clock.advance(seconds=3)
            await eventually(lambda: owner() == "b")
            await asyncio.to_thread(dovecot.append, make_mail(sender="late@customer.example"))
            await eventually(lambda: len(tickets(app_a)) == 6)
        finally:
            await node_a.stop()
            await node_b.stop()

    asyncio.run(main())
    assert [count for _, _, count in tickets(app_a)] == [1] * 6
    assert owner() is None  # b released it on its clean stop


def seed_lease(app: App, owner: str, incarnation: node.Incarnation) -> None:
    """The lease as a process left it when it died without releasing it (kill -9, power cut)."""
    with app.store.unit() as session:
        held = repo.acquire_lease(
            session,
            "imap:support:INBOX",
            owner,
            app.clock(),
            app.settings.cluster.lease_ttl,
            incarnation=str(incarnation),
        )
    assert held


def holder(app: App) -> tuple[str, str | None] | None:
    with app.store.unit() as session:
        found = repo.lease_holder(session, "imap:support:INBOX")
    return found and found[:2]


@pytest.fixture
def other_process() -> Iterator[Callable[[], tuple[subprocess.Popen[str], node.Incarnation]]]:
    """Starts Python processes that report their incarnation and live until their stdin closes."""
    started: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], node.Incarnation]:
        code = "from mailbridge import node; print(node.current(), flush=True); input()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None
        found = node.Incarnation.parse(proc.stdout.readline())
        assert found is not None
        return proc, found

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_node_restarted_after_a_crash_takes_its_folder_back_at_once(
    dovecot: DovecotServer,
    make_app: MakeApp,
    sqlite_url: str,
    other_process: Callable[[], tuple[subprocess.Popen[str], node.Incarnation]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the set clock never reaches the lease's expiry: only a reclaim can end it
    app = make_app(sqlite_url, imap_toml(dovecot, cluster='node_id = "mb1"\nlease_ttl = "3s"'))
    crashed, earlier = other_process()
    seed_lease(app, "mb1", earlier)
    crashed.kill()
    crashed.wait()
    caplog.set_level(logging.INFO, "mailbridge.imap")

    async def scenario(pollers: ImapPollers) -> None:
        await asyncio.to_thread(dovecot.append, make_mail())
        await eventually(lambda: tickets(app))

    with_pollers(app, scenario, node_id="mb1")
    assert holder(app) is None  # released on the clean stop
    assert f"earlier process (pid {earlier.pid} on" in caplog.text


def test_a_live_process_keeps_its_lease_against_the_same_node_id_and_other_nodes(
    dovecot: DovecotServer,
    make_app: MakeApp,
    sqlite_url: str,
    clock: Any,
    other_process: Callable[[], tuple[subprocess.Popen[str], node.Incarnation]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, cluster='node_id = "mb1"\nlease_ttl = "3s"'))
    first, running_one = other_process()  # `mailbridge run` started twice on one machine
    seed_lease(app, "mb1", running_one)
    caplog.set_level(logging.INFO, "mailbridge.imap")

    async def main() -> None:
        pollers = ImapPollers(
            app, ImapConfig.from_settings(app.settings), backoff=(0.1, 0.5), node_id="mb1"
        )
        await pollers.start()
        try:
            # the state changes before the line naming the holder is logged: wait for the line
            standby = f"standby: lease held by mb1 (pid {running_one.pid} on"
            await eventually(lambda: standby in caplog.text)
            assert holder(app) == ("mb1", str(running_one))

            # it ends: the same node's other process takes over without waiting for expiry
            first.kill()
            await asyncio.to_thread(first.wait)
            await eventually(lambda: pollers.status()["support"]["folders"]["INBOX"] == "active")
            assert holder(app) == ("mb1", str(node.current()))
        finally:
            await pollers.stop()

        # another node's process died: its lease holds this node off until it expires
        crashed, other_node = other_process()
        seed_lease(app, "mb2", other_node)
        crashed.kill()
        await asyncio.to_thread(crashed.wait)
        pollers = ImapPollers(
            app, ImapConfig.from_settings(app.settings), backoff=(0.1, 0.5), node_id="mb1"
        )
        await pollers.start()
        try:
            await eventually(lambda: pollers.status()["support"]["folders"]["INBOX"] == "standby")
            assert holder(app) == ("mb2", str(other_node))
            clock.advance(seconds=4)
            await eventually(lambda: pollers.status()["support"]["folders"]["INBOX"] == "active")
        finally:
            await pollers.stop()

    asyncio.run(main())


# --- connecting: TLS and XOAUTH2 ---------------------------------------------------------


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_tls_verifies_the_server_certificate(
    dovecot_factory: Callable[..., DovecotServer],
    make_app: MakeApp,
    sqlite_url: str,
    tls: str,
) -> None:
    server = dovecot_factory(tls=True)
    port = server.tls_port if tls == "implicit" else server.port
    server.append(make_mail())
    trusting = imap_toml(server, tls=f'"{tls}"', port=str(port), ca_file=f'"{server.ca_file}"')
    poll_once(make_app(sqlite_url, trusting))
    assert all("\\Seen" in flags for flags in server.messages().values())

    untrusting = make_app(sqlite_url, imap_toml(server, tls=f'"{tls}"', port=str(port)))
    with pytest.raises(ImapError, match="certificate verify failed"):
        poll_once(untrusting)


def test_xoauth2_token_command_is_rerun_after_a_failed_login(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("expired-token\n")
    command = f'"cat {token}"'
    app = make_app(sqlite_url, imap_toml(dovecot, password_env=None, oauth2_token_command=command))

    async def main() -> None:
        pollers = ImapPollers(app, ImapConfig.from_settings(app.settings), backoff=(0.1, 0.5))
        await pollers.start()
        try:
            await eventually(lambda: "login" in (pollers.status()["support"]["last_error"] or ""))
            # Dovecot's passdb checks the bearer token as if it were the password
            token.write_text(dovecot.users["support@example.com"])
            await eventually(lambda: running(pollers))
            await asyncio.to_thread(dovecot.append, make_mail())
            await eventually(lambda: tickets(app))
        finally:
            await pollers.stop()

    asyncio.run(main())


# --- several accounts, reload, limits ----------------------------------------------------


def test_a_failing_account_leaves_the_others_alone_and_reload_restarts_only_it(
    dovecot: DovecotServer, make_app: MakeApp, make_settings: Callable[..., Any], sqlite_url: str
) -> None:
    good = account_toml(dovecot, name='"good"')
    other = {"name": '"other"', "folder": '"Processed"'}
    app = make_app(sqlite_url, good + account_toml(dovecot, **other, port="1"))  # nothing there
    fixed = make_settings(sqlite_url, good + account_toml(dovecot, **other))

    async def main() -> None:
        pollers = ImapPollers(app, ImapConfig.from_settings(app.settings), backoff=(0.1, 0.5))
        await pollers.start()
        try:
            await eventually(lambda: running(pollers, "good"))
            await eventually(lambda: pollers.status()["other"]["last_error"])
            assert not pollers.status()["other"]["ok"]
            await asyncio.to_thread(dovecot.append, make_mail())
            await eventually(lambda: tickets(app))

            kept = [p for p in pollers.pollers() if p.account.name == "good"]
            pollers.reload(fixed)
            await eventually(lambda: running(pollers, "other"))
            assert [p for p in pollers.pollers() if p.account.name == "good"] == kept
            await asyncio.to_thread(
                dovecot.append, make_mail(sender="x@customer.example"), "Processed"
            )
            await eventually(lambda: len(tickets(app)) == 2)
        finally:
            await pollers.stop()

    asyncio.run(main())


def test_an_oversize_message_does_not_block_the_mailbox(
    dovecot: DovecotServer, make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(sqlite_url, imap_toml(dovecot, max_message_size='"2KB"'))
    big = dovecot.append(make_mail(body="x" * 5000 + "\n"))
    dovecot.append(make_mail(sender="small@customer.example"))
    poll_once(app)

    assert customers(app) == ["small@customer.example"]
    assert "\\Seen" in dovecot.messages()[big]  # handled: the after-action ran
    with app.store.unit() as session:
        (entry,) = repo.list_quarantine(session, include_ignored=False, include_released=False)
        assert entry.reason.startswith("oversize:") and entry.size > 5000
