"""Closing by the customer (SPEC 8): a close word from the customer or a participant on a resolved
ticket closes it; anyone else, or any other text, behaves as before; a rule's resolve notice says
how; `report --json` counts who closed and no longer counts a confirmation as a reopen."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mailbridge import lifecycle
from mailbridge.envelope import Envelope, Source
from mailbridge.report import build_report
from mailbridge.storage import repo
from mailbridge.sweeps import Sweeps
from tests.mail import make_mail, message_id_of

FILE = Source("file", "test", live=False)
CAROL = "Carol Customer <carol@customer.example>"


def resolved_ticket(app: Any, cc: str | None = None) -> tuple[int, bytes]:
    raw = make_mail(subject="Printer on fire", cc=cc)
    number = app.ingestor.accept(raw, Envelope(), FILE).ticket
    app.actions.act(number, "resolve", "cli:alice")
    return number, raw


def reply(app: Any, raw: bytes, body: str, sender: str = CAROL, number: int | None = None) -> Any:
    subject = f"Re: [#{number}] Printer on fire" if number else "Re: Printer on fire"
    mail = make_mail(
        sender=sender,
        subject=subject,
        body=body,
        in_reply_to=None if number else message_id_of(raw),
    )
    return app.ingestor.accept(mail, Envelope(), FILE)


def ticket(app: Any, number: int) -> Any:
    with app.store.unit() as s:
        t = repo.get_ticket(s, number)
        events = [
            (e.kind, e.from_status, e.to_status, e.actor, e.detail)
            for e in repo.ticket_events(s, number)
        ]
        return t.status, events


@pytest.mark.parametrize("body", ["solved", "Solved!", "  CLOSE.\n\n> quoted text", "\n\n#close\n"])
def test_close_word_from_the_customer_closes(app: Any, body: str) -> None:
    number, raw = resolved_ticket(app)
    outcome = reply(app, raw, body)
    assert outcome.ticket == number
    status, events = ticket(app, number)
    assert status == "closed"
    assert events[-1] == (
        "close",
        "resolved",
        "closed",
        "carol@customer.example",
        "confirmed by customer",
    )


def test_close_word_from_a_participant_closes(app: Any) -> None:
    number, raw = resolved_ticket(app, cc="Dan <dan@customer.example>")
    reply(app, raw, "Solved.", sender="Dan <dan@customer.example>")
    status, events = ticket(app, number)
    assert status == "closed"
    assert events[-1][3:] == ("dan@customer.example", "confirmed by customer")


@pytest.mark.parametrize(
    "body", ["Solved, but the paper tray still jams", "not solved", "It is still on fire."]
)
def test_any_other_reply_reopens(app: Any, body: str) -> None:
    number, raw = resolved_ticket(app)
    reply(app, raw, body)
    status, events = ticket(app, number)
    assert status == "open"
    assert events[-1][:3] == ("customer-mail", "resolved", "open")


def test_a_stranger_with_the_subject_tag_gets_a_new_ticket(app: Any) -> None:
    number, raw = resolved_ticket(app)
    outcome = reply(app, raw, "solved", sender="Mallory <mallory@evil.example>", number=number)
    assert outcome.outcome == "created" and outcome.ticket != number
    assert ticket(app, number)[0] == "resolved"


def test_a_stranger_threaded_by_message_id_reopens_as_before(app: Any) -> None:
    number, raw = resolved_ticket(app)
    reply(app, raw, "solved", sender="Eve <eve@elsewhere.example>")
    assert ticket(app, number)[0] == "open"


def test_close_word_on_an_answered_ticket_is_a_plain_reply(app: Any) -> None:
    raw = make_mail(subject="Printer on fire")
    number = app.ingestor.accept(raw, Envelope(), FILE).ticket
    agent = make_mail(
        sender="alice@example.com", subject="Re: x", body="On it.\n", in_reply_to=message_id_of(raw)
    )
    app.ingestor.accept(agent, Envelope(auth_user="alice"), FILE)
    reply(app, raw, "solved")
    assert ticket(app, number)[0] == "open"


def test_close_words_are_configurable(make_app: Any, db_url: str) -> None:
    app = make_app(db_url, '[tickets]\ncustomer_close_words = ["erledigt"]\n')
    number, raw = resolved_ticket(app)
    reply(app, raw, "Erledigt!")
    assert ticket(app, number)[0] == "closed"
    number, raw = resolved_ticket(app)
    reply(app, raw, "solved")
    assert ticket(app, number)[0] == "open"


def test_rule_resolve_notice_says_how_to_confirm(make_app: Any, db_url: str, clock: Any) -> None:
    app = make_app(
        db_url,
        '[[rules]]\nname = "auto-resolve"\nwhen = "new"\nidle_for = "7d"\nthen = "resolved"\nnotify = true\n',
    )
    number = app.ingestor.accept(make_mail(subject="Printer on fire"), Envelope(), FILE).ticket
    Sweeps(app.store, app.settings, app.clock, app.outbound).run(clock.now + timedelta(days=8))
    with app.store.unit() as s:
        (notice,) = [
            m.body_text for m in repo.ticket_messages(s, number) if m.source == "outbound:rule"
        ]
    assert "is now resolved" in notice
    assert 'If your problem is solved, reply with just the word "close"' in notice


def test_close_word_matching() -> None:
    assert lifecycle.confirms("Solved :)", ["solved"])
    assert not lifecycle.confirms("", ["solved"])
    assert not lifecycle.confirms("...", ["solved", ""])


def test_report_counts_closed_by_and_no_confirmation_as_reopen(app: Any, clock: Any) -> None:
    # 1: resolved by an agent, confirmed by the customer
    n1, raw1 = resolved_ticket(app)
    reply(app, raw1, "Solved!")
    # 2: resolved, then the customer writes again: a reopen; then closed by an agent
    n2, raw2 = resolved_ticket(app)
    reply(app, raw2, "Still broken")
    app.actions.act(n2, "close", "cli:alice")
    # 3: closed by a rule
    raw3 = make_mail(subject="Quiet one")
    n3 = app.ingestor.accept(raw3, Envelope(), FILE).ticket
    with app.store.unit() as s:
        t = repo.get_ticket(s, n3, lock=True)
        transition = lifecycle.apply(
            repo.ticket_state(t),
            lifecycle.Event(lifecycle.Kind.CLOSE, "rule:auto-close"),
            clock.now,
        )
        repo.save_transition(s, t, transition, clock.now)
    report = build_report(app.store, clock.now + timedelta(hours=1))
    assert report["closed_by"] == {"customer": 1, "agent": 1, "rule": 1}
    assert report["reopen"] == {"resolved": 3, "reopened": 1, "rate": round(1 / 3, 4)}
    assert {n1, n2, n3} == {1, 2, 3}
