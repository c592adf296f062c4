"""The batched write path (storage.uow.Batch) on SQLite and PostgreSQL: a group commit holds its
tickets, messages and the rows that refer to them and writes each table once, and everything
ingest reads inside the batch sees what it holds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from mailbridge.app import App
from mailbridge.envelope import Envelope, Source
from mailbridge.storage import repo
from tests.configs import MakeApp
from tests.mail import make_mail, message_id_of
from tests.tickets import FILE

LIVE = Source("smtp", "127.0.0.1:2525", live=True)


@contextmanager
def statements(app: App) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements `app` runs meanwhile, with their parameters (an executemany counts
    once)."""
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        seen.append((args[2], args[3]))

    event.listen(app.store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(app.store.engine, "before_cursor_execute", record)


def batch(app: App, raws: list[bytes], source: Source = FILE) -> list[Any]:
    return app.ingestor.accept_many([(raw, Envelope(), source) for raw in raws])


def break_on_subject(monkeypatch: pytest.MonkeyPatch, subject: str) -> None:
    """Writing the events of the ticket with this subject fails, whenever it is tried."""
    real = repo.add_events

    def add_events(session: Any, number: int, records: Any, pk: Any) -> None:
        ticket = repo.get_ticket(session, number)
        if ticket is not None and ticket.subject == subject:
            raise RuntimeError("disk on fire")
        real(session, number, records, pk)

    monkeypatch.setattr(repo, "add_events", add_events)


def test_a_batch_of_new_tickets_writes_each_table_once(app: App) -> None:
    raws = [
        make_mail(
            sender=f"c{i}@customer.example",
            subject=f"case {i}",
            cc="colleague@customer.example",
            attachments=[("log.txt", "text/plain", b"x" * 50)],
        )
        for i in range(100)
    ]
    with statements(app) as seen:
        outs = batch(app, raws)
    assert [o.outcome for o in outs] == ["created"] * 100
    inserts = [sql for sql, _ in seen if sql.lstrip().upper().startswith("INSERT")]
    # tickets, messages, attachments, thread keys, participants, events: one statement each
    assert len(inserts) <= 8, inserts
    # PostgreSQL numbers each new ticket from the sequence as it is made (a block would leave
    # gaps in the numbers people see); everything else is per batch, whatever its size
    numbering = [sql for sql, p in seen if "nextval" in sql and p.get("t") == "tickets"]
    assert len(numbering) == (100 if app.store.dialect == "postgresql" else 0)
    assert len(seen) - len(numbering) <= 20, seen
    with app.store.unit() as s:
        shown = repo.get_ticket(s, outs[99].ticket)
        assert shown is not None and shown.subject == "case 99"
        assert repo.participants(s, outs[99].ticket) == [
            "c99@customer.example",
            "colleague@customer.example",
        ]
        messages = repo.ticket_messages(s, outs[99].ticket)
        assert [a.filename for a in messages[0].attachments] == ["log.txt"]
        assert [e.kind for e in repo.ticket_events(s, outs[99].ticket)] == ["created"]


def test_replies_thread_to_a_ticket_the_same_batch_created(app: App) -> None:
    first = make_mail(sender="carol@customer.example", subject="Printer on fire")
    mid = message_id_of(first)
    with app.store.unit() as s:
        before = len(repo.list_tickets(s))
    number = before + 1
    raws = [
        first,
        make_mail(sender="carol@customer.example", subject="Re: fire", in_reply_to=mid),
        make_mail(sender="carol@customer.example", subject=f"[#{number}] still burning"),
        make_mail(sender="mallory@evil.example", subject=f"[#{number}] let me in"),
    ]
    outs = batch(app, raws)
    assert [o.outcome for o in outs] == ["created", "appended", "appended", "created"]
    assert outs[0].ticket == number and outs[1].ticket == outs[2].ticket == number
    assert outs[3].ticket == number + 1  # the subject tag of a stranger does not thread
    with app.store.unit() as s:
        assert len(repo.ticket_messages(s, number)) == 3
        ticket = repo.get_ticket(s, number)
        assert ticket is not None and ticket.status == "new"


def test_a_token_reply_threads_to_a_ticket_the_same_batch_created(app: App) -> None:
    first = make_mail(sender="dave@customer.example")
    outs = batch(app, [first])
    with app.store.unit() as s:
        ticket = repo.get_ticket(s, outs[0].ticket)
        assert ticket is not None
        token = ticket.token
    # and within one batch: the second mail answers the token of the first mail's ticket
    new = make_mail(sender="erin@customer.example")
    outs = batch(app, [new, make_mail(to=f"support+{token}@example.com", subject="more")])
    assert [o.outcome for o in outs] == ["created", "appended"]


def test_flood_guard_counts_tickets_the_batch_holds(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, "[tickets]\nmax_new_per_sender_per_hour = 3\n")
    outs = batch(app, [make_mail(subject=f"s{i}") for i in range(5)], source=LIVE)
    assert [o.outcome for o in outs] == ["created"] * 3 + ["quarantined"] * 2
    assert {o.reason for o in outs[3:]} == {"flood"}


LEAST_OPEN = """
[[queues]]
name = "support"
addresses = ["support@example.com"]
members = ["alice@example.com", "bob@agents.example.com"]
assign = "{strategy}"
"""


def test_least_open_counts_tickets_the_batch_holds(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, LEAST_OPEN.format(strategy="least_open"))
    outs = batch(app, [make_mail(sender=f"c{i}@customer.example") for i in range(4)])
    with app.store.unit() as s:
        owners = [t.owner for t in (repo.get_ticket(s, o.ticket) for o in outs) if t]
    assert owners == [
        "alice@example.com",
        "bob@agents.example.com",
        "alice@example.com",
        "bob@agents.example.com",
    ]


def test_sticky_finds_the_owner_of_a_ticket_the_batch_holds(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, LEAST_OPEN.format(strategy="sticky"))
    senders = ["c1@customer.example", "c2@customer.example", "c1@customer.example"]
    outs = batch(app, [make_mail(sender=s, subject=f"case {n}") for n, s in enumerate(senders)])
    with app.store.unit() as s:
        owners = [t.owner for t in (repo.get_ticket(s, o.ticket) for o in outs) if t]
    assert owners[0] != owners[1] and owners[2] == owners[0]


def test_a_failed_mail_gives_its_ticket_number_back(
    sqlite_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_on_subject(monkeypatch, "case 2")
    outs = batch(sqlite_app, [make_mail(subject=f"case {i}") for i in range(5)])
    assert [o.outcome for o in outs] == ["created"] * 2 + ["quarantined"] + ["created"] * 2
    # SQLite numbers the tickets of a batch itself: the failed mail's number is not a gap
    assert [o.ticket for o in outs if o.ticket] == [1, 2, 3, 4]
    with sqlite_app.store.unit() as s:
        assert [t.number for t, _ in repo.list_tickets(s)] == [1, 2, 3, 4]
        assert [t.subject for t, _ in repo.list_tickets(s)][2] == "case 3"


def test_the_number_of_a_purged_ticket_is_never_given_again(app: App) -> None:
    outs = batch(app, [make_mail(subject=f"case {i}") for i in range(3)])
    last = outs[-1].ticket
    app.actions.act(last, "spam", "cli:test")
    assert app.actions.purge(last, "cli:test") == 1
    again = batch(app, [make_mail(subject="after the purge")])
    assert again[0].ticket is not None and again[0].ticket > last


def test_acknowledgement_limits_count_what_the_batch_holds(make_app: MakeApp, db_url: str) -> None:
    app = make_app(
        db_url,
        "[tickets]\nacknowledge = true\nack_max_per_domain_per_hour = 2\n"
        "max_new_per_sender_per_hour = 100\n",
    )
    raws = [make_mail(sender=f"c{i}@customer.example", subject=f"case {i}") for i in range(5)]
    outs = batch(app, raws, source=LIVE)
    assert [o.outcome for o in outs] == ["created"] * 5
    with app.store.unit() as s:
        acks = [row.rcpt_key for row in repo.list_outbox(s) if row.kind == "ack"]
    assert acks == ["c0@customer.example", "c1@customer.example"]


def test_a_reply_threads_after_a_failed_mail_split_the_batch(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_on_subject(monkeypatch, "boom")
    first = make_mail(sender="carol@customer.example", subject="Printer on fire")
    reply = make_mail(
        sender="carol@customer.example", subject="Re: fire", in_reply_to=message_id_of(first)
    )
    # the failure makes the batch run again a mail per savepoint: the reply is looked up after
    # the first mail's Message-ID was written, which the batch read ahead as not yet known
    outs = batch(app, [first, make_mail(subject="boom"), reply])
    assert [o.outcome for o in outs] == ["created", "quarantined", "appended"]
    assert outs[2].ticket == outs[0].ticket
