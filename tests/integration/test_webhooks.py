"""Signed webhooks through the outbox (SPEC 9), posted to a real HTTP receiver on a free port.

The receiver is `http.server` in a thread: it records every request (headers and body) and
answers from a script of status codes. The sender is the real `OutboxSender`, run by hand with a
set clock so retries happen when a test moves time, not when a timer fires.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailbridge.app import App
from mailbridge.clock import FixedClock
from mailbridge.envelope import Envelope, Source
from mailbridge.errors import ConfigError
from mailbridge.lifecycle import Record
from mailbridge.metrics import Metrics
from mailbridge.outbound.sender import OutboxSender, SenderConfig
from mailbridge.storage import repo
from mailbridge.sweeps import SweepConfig, Sweeps
from tests.mail import make_mail
from tests.receiver import Receiver

SECRET = "s3cret-for-tests"
LIVE = Source("smtp", "127.0.0.1:2525", live=True)


def hook_config(url: str, events: str = '["created", "status"]') -> str:
    return f"""
[[webhooks]]
name = "crm"
url = "{url}"
events = {events}
secret_env = "MB_HOOK_SECRET"
timeout = "5s"
"""


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MB_HOOK_SECRET", SECRET)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as running:
        yield running


def customer_mail(
    app: App, subject: str = "Printer on fire", sender: str = "carol@customer.example"
) -> int:
    raw = make_mail(sender=sender, subject=subject)
    outcome = app.ingestor.accept(raw, Envelope(sender, ("support@example.com",)), LIVE)
    assert outcome.ticket is not None
    return outcome.ticket


def outbox(app: App) -> list[Any]:
    with app.store.unit() as session:
        return [r for r in repo.list_outbox(session) if r.kind == "webhook"]


def test_each_event_is_posted_once_signed_with_the_ticket_as_it_was(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    app = make_app(sqlite_url, hook_config(receiver.url))
    sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
    number = customer_mail(app)
    clock.advance(minutes=5)
    app.actions.act(number, "resolve", "alice@example.com")

    assert sender.deliver_due() == 2
    assert sender.deliver_due() == 0  # nothing is posted twice
    assert len(receiver.posts) == 2
    created, resolved = sorted(receiver.posts, key=lambda p: p.json["at"])
    assert all(p.signed() for p in receiver.posts)
    assert created.headers["content-type"] == "application/json"
    assert created.json["event"] == "created"
    assert created.json["at"] == "2026-11-02T09:00:00Z"
    # built when queued: the ticket was new then, though it is resolved now
    assert created.json["ticket"]["status"] == "new"
    assert created.json["ticket"]["number"] == number
    assert created.json["ticket"]["subject"] == "Printer on fire"
    assert created.json["ticket"]["reply_to"].startswith("support+")
    assert "messages" not in created.json["ticket"]
    assert resolved.json["event"] == "resolve"
    assert resolved.json["ticket"]["status"] == "resolved"
    assert resolved.json["detail"] == {
        "actor": "alice@example.com",
        "from_status": "new",
        "to_status": "resolved",
        "note": None,
    }
    ids = {p.headers["x-mailbridge-delivery"] for p in receiver.posts}
    assert len(ids) == 2
    assert [r.state for r in outbox(app)] == ["sent", "sent"]


def test_a_receiver_answering_503_then_204_gets_the_event_once_on_retry(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock
) -> None:
    with Receiver(SECRET, script=[503, 204]) as receiver:
        app = make_app(sqlite_url, hook_config(receiver.url, '["created"]'))
        metrics = Metrics(app.store)
        sender = OutboxSender(
            app.store,
            SenderConfig.from_settings(app.settings),
            clock,
            on_webhook=metrics.webhook_delivery,
        )
        customer_mail(app)

        assert sender.deliver_due() == 0
        (row,) = outbox(app)
        assert (row.state, row.attempts) == ("queued", 1)
        assert "HTTP 503" in (row.last_error or "")
        assert sender.deliver_due() == 0  # not due before its backoff
        clock.advance(hours=1)
        assert sender.deliver_due() == 1
        clock.advance(hours=3)
        assert sender.deliver_due() == 0

    first, second = receiver.posts
    assert first.body == second.body
    assert first.headers["x-mailbridge-delivery"] == second.headers["x-mailbridge-delivery"]
    assert second.signed()
    (row,) = outbox(app)
    assert (row.state, row.attempts) == ("sent", 2)
    exposition = metrics.exposition().decode()
    assert 'mailbridge_webhook_deliveries_total{result="retry"} 1.0' in exposition
    assert 'mailbridge_webhook_deliveries_total{result="sent"} 1.0' in exposition


def test_400_fails_the_delivery_with_the_reason_and_leaves_the_ticket_alone(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock
) -> None:
    with Receiver(SECRET, default=400) as receiver:
        app = make_app(sqlite_url, hook_config(receiver.url, '["created"]'))
        sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
        number = customer_mail(app)
        sender.deliver_due()
        clock.advance(days=1)
        sender.deliver_due()

    assert len(receiver.posts) == 1
    (row,) = outbox(app)
    assert row.state == "failed"
    assert row.last_error == "HTTP 400 Bad Request: bad payload"
    with app.store.unit() as session:
        kinds = [e.kind for e in repo.ticket_events(session, number)]
    assert kinds == ["created"]  # a refused post is not written onto the customer's ticket


def test_an_event_whose_transaction_rolled_back_is_never_posted(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    app = make_app(sqlite_url, hook_config(receiver.url, '["status"]'))
    sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
    number = customer_mail(app)

    class Crash(Exception):
        pass

    with pytest.raises(Crash), app.store.unit() as session:
        repo.add_events(
            session, number, [Record(clock(), "spam", "alice@example.com", "new", "spam")], None
        )
        queued = [r.mail_from for r in repo.list_outbox(session) if r.kind == "webhook"]
        assert queued == ["crm"]  # queued in the transaction, and gone with it
        raise Crash
    app.actions.act(number, "resolve", "alice@example.com")  # a committed one, for contrast

    sender.deliver_due()
    clock.advance(days=1)
    sender.deliver_due()
    assert [p.json["event"] for p in receiver.posts] == ["resolve"]
    assert len(outbox(app)) == 1


def test_agent_replies_and_time_rules_post_too(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    rule = (
        '[[rules]]\nname = "auto-resolve"\nwhen = "answered"\nidle_for = "7d"\nthen = "resolved"\n'
    )
    app = make_app(sqlite_url, rule + hook_config(receiver.url, '["message", "resolve"]'))
    sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
    number = customer_mail(app)
    with app.store.unit() as session:
        (first,) = [m for m in repo.ticket_messages(session, number) if m.direction == "inbound"]
    reply = make_mail(
        sender="alice@example.com", subject="Re", body="Fixed.\n", in_reply_to=first.message_id
    )
    app.ingestor.accept(reply, Envelope(auth_user="alice"), LIVE)
    clock.advance(days=8)
    Sweeps(app.store, SweepConfig.from_settings(app.settings), clock, app.outbound).run(clock())

    sender.deliver_due()
    posts = sorted(receiver.posts, key=lambda p: (p.json["at"], p.json["detail"].get("id", 0)))
    # every message stored on the ticket once: the customer's, the team's notice, the agent's
    # reply and its relay to carol; then the rule's event
    assert [
        (p.json["event"], p.json["detail"]["actor"], p.json["detail"].get("author_kind"))
        for p in posts
    ] == [
        ("message", "carol@customer.example", "customer"),
        ("message", "support@example.com", "system"),
        ("message", "alice@example.com", "agent"),
        ("message", "support@example.com", "agent"),
        ("resolve", "rule:auto-resolve", None),
    ]
    assert [p.json["detail"].get("direction") for p in posts[:4]] == [
        "inbound",
        "outbound",
        "inbound",
        "outbound",
    ]
    assert posts[-1].json["ticket"]["status"] == "resolved"


def test_every_customer_mail_on_a_ticket_is_one_message_post(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    app = make_app(sqlite_url, hook_config(receiver.url, '["message"]'))
    sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
    number = customer_mail(app)
    with app.store.unit() as session:
        (first,) = [m for m in repo.ticket_messages(session, number) if m.direction == "inbound"]
        events_before = [e.kind for e in repo.ticket_events(session, number)]
    clock.advance(minutes=5)
    # a second mail on a `new` ticket changes no status and so writes no event
    again = make_mail(
        sender="carol@customer.example", subject="Re", body="Still.\n", in_reply_to=first.message_id
    )
    outcome = app.ingestor.accept(again, Envelope("carol@customer.example"), LIVE)
    assert outcome.ticket == number

    sender.deliver_due()
    clock.advance(days=1)
    assert sender.deliver_due() == 0  # nothing is posted twice
    with app.store.unit() as session:
        assert [e.kind for e in repo.ticket_events(session, number)] == events_before
        stored = [m.id for m in repo.ticket_messages(session, number)]
    posts = sorted(receiver.posts, key=lambda p: p.json["detail"]["id"])
    assert [p.json["detail"]["id"] for p in posts] == stored  # each stored message once
    assert {p.json["event"] for p in posts} == {"message"}
    customer = [p for p in posts if p.json["detail"]["direction"] == "inbound"]
    assert [p.json["detail"]["from"] for p in customer] == ["carol@customer.example"] * 2
    assert [p.json["at"] for p in customer] == ["2026-11-02T09:00:00Z", "2026-11-02T09:05:00Z"]
    # the rest are the team's notices of each mail, stored on the ticket as outbound copies
    assert {p.json["detail"]["author_kind"] for p in posts if p not in customer} == {"system"}
    assert all(p.signed() for p in posts)
    assert len({p.headers["x-mailbridge-delivery"] for p in posts}) == len(posts)


def test_two_senders_on_postgresql_post_each_event_once(
    make_app: Callable[..., App], pg_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    app = make_app(pg_url, hook_config(receiver.url, '["created"]'))
    for n in range(30):
        customer_mail(app, f"Question {n}", f"customer{n}@example.org")  # under the flood guard
    senders = [
        OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock, batch_size=4)
        for _ in range(2)
    ]
    go = threading.Barrier(len(senders))
    counts: list[int] = []

    def run(sender: OutboxSender) -> None:
        go.wait()
        counts.append(sender.deliver_due())

    threads = [threading.Thread(target=run, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(counts) == 30
    ids = [p.headers["x-mailbridge-delivery"] for p in receiver.posts]
    assert len(ids) == 30 and len(set(ids)) == 30
    subjects = sorted(p.json["ticket"]["subject"] for p in receiver.posts)
    assert subjects == sorted(f"Question {n}" for n in range(30))
    assert {r.state for r in outbox(app)} == {"sent"}


def test_webhooks_go_out_without_a_smarthost_and_mail_keeps_waiting(
    make_app: Callable[..., App], sqlite_url: str, clock: FixedClock, receiver: Receiver
) -> None:
    app = make_app(sqlite_url, "[tickets]\nacknowledge = true\n" + hook_config(receiver.url))
    sender = OutboxSender(app.store, SenderConfig.from_settings(app.settings), clock)
    customer_mail(app)
    assert sender.deliver_due() == 1
    with app.store.unit() as session:
        states = {(r.kind, r.state) for r in repo.list_outbox(session)}
    assert states == {("webhook", "sent"), ("ack", "queued"), ("notify", "queued")}


def test_no_webhook_configured_queues_nothing(
    make_app: Callable[..., App], sqlite_url: str
) -> None:
    app = make_app(sqlite_url)
    customer_mail(app)
    assert outbox(app) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('events = ["created", "exploded"]', "webhooks[0].events: unknown event 'exploded'"),
        ('events = ["created"]\nurl = "ftp://x"', "webhooks[0].url: not an http(s) URL"),
    ],
)
def test_config_errors_name_the_key(
    make_settings: Callable[..., Any], sqlite_url: str, entry: str, message: str
) -> None:
    text = f'[[webhooks]]\nname = "crm"\n{entry}\nsecret_env = "MB_HOOK_SECRET"\n'
    if "url" not in entry:
        text += 'url = "http://127.0.0.1:9/x"\n'
    with pytest.raises(ConfigError) as info:
        make_settings(sqlite_url, text)
    assert message in str(info.value)


def test_a_webhook_needs_a_secret(make_settings: Callable[..., Any], sqlite_url: str) -> None:
    text = '[[webhooks]]\nname = "crm"\nurl = "http://127.0.0.1:9/x"\nevents = ["created"]\n'
    with pytest.raises(ConfigError) as info:
        make_settings(sqlite_url, text)
    assert "needs secret_env or secret_file" in str(info.value)
