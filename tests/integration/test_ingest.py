"""The ingest funnel on SQLite and PostgreSQL: threading (SPEC 2), not-a-ticket classes (SPEC 3),
dedup and raw storage (SPEC 4), lifecycle through mail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mailbridge.app import App
from mailbridge.envelope import Envelope, Source
from mailbridge.storage import repo
from tests.configs import MakeApp
from tests.mail import make_mail, message_id_of
from tests.tickets import FILE

LIVE = Source("smtp", "127.0.0.1:2525", live=True)
AR_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"


def ingest(app: App, raw: bytes, env: Envelope | None = None, source: Source = FILE) -> Any:
    return app.ingestor.accept(raw, env or Envelope(), source)


def ticket(app: App, number: int) -> Any:
    with app.store.unit() as s:
        return repo.get_ticket(s, number)


def events(app: App, number: int) -> list[tuple[str, str | None, str | None, str]]:
    with app.store.unit() as s:
        return [
            (e.kind, e.from_status, e.to_status, e.actor) for e in repo.ticket_events(s, number)
        ]


def test_new_mail_creates_a_new_ticket_with_an_event(app: App) -> None:
    out = ingest(app, make_mail(subject="Printer on fire"))
    assert (out.outcome, out.ticket) == ("created", 1)
    t = ticket(app, 1)
    assert (t.status, t.customer, t.customer_name, t.subject) == (
        "new",
        "carol@customer.example",
        "Carol Customer",
        "Printer on fire",
    )
    assert len(t.token) == 16
    assert events(app, 1) == [("created", None, "new", "carol@customer.example")]


def test_ticket_numbers_are_sequential(app: App) -> None:
    numbers = [ingest(app, make_mail(subject=f"n{i}")).ticket for i in range(5)]
    assert numbers == [1, 2, 3, 4, 5]


def test_reply_threads_by_in_reply_to(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    reply = make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first))
    out = ingest(app, reply)
    assert (out.outcome, out.ticket) == ("appended", 1)
    assert out.reason.startswith("in-reply-to <")


def test_reply_threads_by_references_newest_first(app: App) -> None:
    a, b = make_mail(subject="a"), make_mail(subject="b")
    ingest(app, a), ingest(app, b)
    refs = f"{message_id_of(a)} <unknown@nowhere> {message_id_of(b)}"
    out = ingest(app, make_mail(subject="Re", references=refs))
    assert out.ticket == 2 and out.reason.startswith("references <")


def test_unknown_references_make_a_new_ticket(app: App) -> None:
    ingest(app, make_mail())
    out = ingest(app, make_mail(in_reply_to="<never-seen@x>"))
    assert (out.outcome, out.ticket) == ("created", 2)


def test_token_in_recipient_address_threads(app: App) -> None:
    ingest(app, make_mail())
    token = ticket(app, 1).token
    out = ingest(app, make_mail(subject="no headers at all", to=f"support+{token}@example.com"))
    assert (out.outcome, out.ticket) == ("appended", 1)
    assert "token" in out.reason


def test_token_from_envelope_recipient_threads(app: App) -> None:
    ingest(app, make_mail())
    token = ticket(app, 1).token
    out = ingest(
        app,
        make_mail(subject="x"),
        Envelope("carol@customer.example", (f"support+{token}@example.com",)),
    )
    assert out.ticket == 1


def test_subject_tag_threads_for_the_customer(app: App) -> None:
    ingest(app, make_mail())
    out = ingest(app, make_mail(subject="Re: [#1] Printer on fire"))
    assert (out.outcome, out.ticket) == ("appended", 1)
    assert out.reason.startswith("subject-tag [#1], sender is the customer")


def test_subject_tag_threads_for_a_participant(app: App) -> None:
    ingest(app, make_mail(cc="Dave <dave@customer.example>"))
    out = ingest(app, make_mail(sender="dave@customer.example", subject="Re: [#1] Printer"))
    assert out.ticket == 1 and "participant" in out.reason


def test_stranger_with_someone_elses_tag_gets_a_new_ticket(app: App) -> None:
    ingest(app, make_mail())
    out = ingest(app, make_mail(sender="mallory@evil.example", subject="Re: [#1] Printer on fire"))
    assert (out.outcome, out.ticket) == ("created", 2)
    assert "is not on ticket #1" in out.reason
    assert ticket(app, 1).status == "new"


def test_agent_tag_needs_authentication(app: App) -> None:
    ingest(app, make_mail())
    spoofed = ingest(app, make_mail(sender="alice@example.com", subject="[#1] hi"))
    assert spoofed.outcome == "created"
    real = ingest(
        app,
        make_mail(
            sender="alice@example.com",
            subject="[#1] hi",
            headers={"Authentication-Results": AR_PASS},
        ),
    )
    assert (real.outcome, real.ticket) == ("appended", 1)
    assert ticket(app, 1).status == "answered"


def test_customer_reply_reopens_answered(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    app.actions.act(1, "resolve", "cli:test")
    ingest(app, make_mail(in_reply_to=message_id_of(first)))
    assert ticket(app, 1).status == "open"
    kinds = [(k, f, t) for k, f, t, _ in events(app, 1)]
    assert kinds == [
        ("created", None, "new"),
        ("resolve", "new", "resolved"),
        ("customer-mail", "resolved", "open"),
    ]


@pytest.mark.parametrize("action", ["close", "delete"])
def test_reply_to_closed_or_deleted_ticket_opens_a_linked_ticket(app: App, action: str) -> None:
    first = make_mail()
    ingest(app, first)
    app.actions.act(1, action, "cli:test")
    out = ingest(app, make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first)))
    assert (out.outcome, out.ticket) == ("created", 2)
    assert ticket(app, 2).follow_up_of == 1
    assert ticket(app, 1).status == ("closed" if action == "close" else "deleted")


def test_customer_mail_on_spam_ticket_stays_spam(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    app.actions.act(1, "spam", "cli:test")
    out = ingest(app, make_mail(in_reply_to=message_id_of(first)))
    assert (out.outcome, out.ticket, ticket(app, 1).status) == ("appended", 1, "spam")


def test_agent_reply_with_authentication_results_marks_answered(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    out = ingest(
        app,
        make_mail(
            sender="Alice <alice@example.com>",
            to="carol@customer.example",
            cc="support@example.com",
            in_reply_to=message_id_of(first),
            headers={"Authentication-Results": AR_PASS},
        ),
    )
    assert out.outcome == "appended"
    assert ticket(app, 1).status == "answered"
    assert events(app, 1)[-1] == ("agent-reply", "new", "answered", "alice@example.com")


def test_authentication_results_from_untrusted_server_is_not_agent_authority(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    forged = "evil.example; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
    ingest(
        app,
        make_mail(
            sender="alice@example.com",
            in_reply_to=message_id_of(first),
            headers={"Authentication-Results": forged},
        ),
    )
    assert ticket(app, 1).status == "new"
    assert events(app, 1)[-1][0] == "unauthenticated-agent"


def test_smtp_auth_is_agent_authority(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    ingest(
        app,
        make_mail(sender="bob@agents.example.com", in_reply_to=message_id_of(first)),
        Envelope("bob@agents.example.com", ("support@example.com",), auth_user="bob"),
    )
    assert ticket(app, 1).status == "answered"


def test_agent_commands_change_status(app: App, clock: Any) -> None:
    first = make_mail()
    ingest(app, first)
    out = ingest(
        app,
        make_mail(
            sender="alice@example.com", body="#postpone 2d\n", in_reply_to=message_id_of(first)
        ),
        Envelope(auth_user="alice"),
    )
    t = ticket(app, 1)
    assert t.status == "postponed" and t.postponed_until == clock.now + timedelta(days=2), (
        out.reason
    )
    ingest(
        app,
        make_mail(
            sender="alice@example.com",
            body="#resolve\n\nAll fixed.",
            in_reply_to=message_id_of(first),
        ),
        Envelope(auth_user="alice"),
    )
    assert ticket(app, 1).status == "resolved"


def test_refused_agent_command_changes_nothing(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    app.actions.act(1, "close", "cli:test")
    out = ingest(
        app,
        make_mail(sender="alice@example.com", body="#close\n", in_reply_to=message_id_of(first)),
        Envelope(auth_user="alice"),
    )
    assert "refused" in out.reason and ticket(app, 1).status == "closed"


# --- not a ticket --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        ({"Auto-Submitted": "auto-replied"}, "auto-submitted: auto-replied"),
        ({"X-Autoreply": "yes"}, "x-autoreply"),
        ({"X-Autorespond": "yes"}, "x-autorespond"),
        ({"Precedence": "auto_reply"}, "precedence: auto_reply"),
        ({"X-Loop": "support@example.com"}, "own-loop"),
    ],
)
def test_automatic_mail_is_not_a_new_ticket(app: App, headers: dict[str, str], rule: str) -> None:
    out = ingest(app, make_mail(headers=headers))
    assert out.outcome == "ignored" and out.reason.startswith(rule)
    with app.store.unit() as s:
        assert repo.list_tickets(s) == []
        (entry,) = repo.list_quarantine(s, include_ignored=True, include_released=False)
        assert entry.kind == "ignored" and entry.reason == out.reason


def test_auto_reply_on_a_ticket_is_recorded_without_status_change(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    app.actions.act(1, "resolve", "cli:test")
    out = ingest(
        app,
        make_mail(
            subject="Out of office",
            in_reply_to=message_id_of(first),
            headers={"Auto-Submitted": "auto-replied"},
        ),
    )
    assert (out.outcome, out.ticket) == ("appended", 1)
    assert ticket(app, 1).status == "resolved"
    assert events(app, 1)[-1][:3] == ("auto-reply", "resolved", "resolved")


def test_bounce_threads_to_the_ticket_of_the_original(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    dsn = (
        b"From: MAILER-DAEMON@mx.example.com\r\nTo: support@example.com\r\nSubject: Undelivered Mail\r\n"
        b"Message-ID: <dsn1@mx.example.com>\r\nIn-Reply-To: "
        + message_id_of(first).encode()
        + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; carol@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
    )
    out = ingest(app, dsn, Envelope("", ("support@example.com",)))
    assert (out.outcome, out.ticket) == ("appended", 1) and out.reason.startswith("bounce")
    assert ticket(app, 1).status == "new"


def test_null_sender_unthreaded_is_ignored(app: App) -> None:
    out = ingest(
        app, make_mail(sender="postmaster@x.example"), Envelope("", ("support@example.com",))
    )
    assert out.outcome == "ignored" and out.reason == "bounce: null envelope sender"


def test_blocked_sender_goes_to_spam(make_app: MakeApp, db_url: str) -> None:
    app = make_app(db_url, '[tickets]\nblocked_senders = ["@spam.example"]\n')
    out = ingest(app, make_mail(sender="x@spam.example"))
    assert out.outcome == "created" and ticket(app, out.ticket).status == "spam"
    assert [e[0] for e in events(app, out.ticket)] == ["created", "spam"]


def test_flood_guard_quarantines_live_mail_and_retry_releases(
    make_app: MakeApp, db_url: str
) -> None:
    from mailbridge.actions import retry_quarantined

    app = make_app(db_url, "[tickets]\nmax_new_per_sender_per_hour = 3\n")
    outs = [ingest(app, make_mail(subject=f"s{i}"), source=LIVE) for i in range(5)]
    assert [o.outcome for o in outs] == ["created"] * 3 + ["quarantined"] * 2
    assert outs[3].reason == "flood"
    assert (
        ingest(app, make_mail(subject="backfill")).outcome == "created"
    )  # `ingest` is not throttled
    released = retry_quarantined(app.store, app.ingestor, outs[3].quarantine)
    assert released.outcome == "created"
    with app.store.unit() as s:
        assert [q.id for q in repo.list_quarantine(s, False, False)] == [outs[4].quarantine]


# --- nothing lost, nothing doubled ---------------------------------------------------


def test_same_mail_twice_is_one_message(app: App) -> None:
    raw = make_mail()
    assert ingest(app, raw).outcome == "created"
    again = ingest(app, raw)
    assert (again.outcome, again.ticket) == ("duplicate", 1)
    # another hop's trace headers and CRLF line endings do not make it a different mail
    relayed = b"Received: from mx2 by mx1; Mon, 2 Nov 2026 08:00:00 +0000\r\n" + raw.replace(
        b"\n", b"\r\n"
    )
    assert ingest(app, relayed).outcome == "duplicate"


def test_different_mail_reusing_a_message_id_is_kept(app: App) -> None:
    ingest(app, make_mail(message_id="<same@x>", body="one"))
    out = ingest(app, make_mail(message_id="<same@x>", body="two", subject="other"))
    assert out.outcome in ("created", "appended")
    with app.store.unit() as s:
        assert sum(n for _, n in repo.list_tickets(s)) == 2


def test_raw_bytes_are_kept_byte_identical(app: App) -> None:
    raw = b"From: a@b.example\r\nSubject: \xff\xfe odd bytes\r\nMessage-ID: <raw@x>\r\n\r\nbody \x00 \r\n\r\n\r\n"
    out = ingest(app, raw)
    with app.store.unit() as s:
        assert repo.get_message(s, out.message, with_raw=True).raw == raw


def test_unparseable_mail_is_quarantined_raw_and_retry_keeps_it(app: App) -> None:
    from mailbridge.actions import retry_quarantined

    raw = b"\x00\x01\x02 this is not a mail"
    out = ingest(app, raw)
    assert out.outcome == "quarantined" and out.reason.startswith("unparseable")
    with app.store.unit() as s:
        assert repo.get_quarantine(s, out.quarantine, with_raw=True).raw == raw
    again = retry_quarantined(app.store, app.ingestor, out.quarantine)
    assert again.outcome == "quarantined" and again.quarantine == out.quarantine
    assert ingest(app, raw).outcome == "duplicate"  # held already: not a second entry


def test_storage_error_in_derivation_quarantines_and_leaves_no_half_rows(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailbridge import ingest as ingest_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_module.repo, "add_events", broken)
    out = ingest(app, make_mail())
    assert out.outcome == "quarantined" and "disk on fire" in out.reason
    with app.store.unit() as s:
        assert repo.list_tickets(s) == []
    monkeypatch.undo()
    from mailbridge.actions import retry_quarantined

    assert retry_quarantined(app.store, app.ingestor, out.quarantine).outcome == "created"


def test_group_commit_with_a_bad_message_in_the_batch(app: App) -> None:
    items = [(make_mail(subject=f"m{i}"), Envelope(), FILE) for i in range(5)]
    items.insert(2, (b"", Envelope(), FILE))
    items.append((items[0][0], Envelope(), FILE))
    outs = app.ingestor.accept_many(items)
    assert [o.outcome for o in outs] == [
        "created",
        "created",
        "quarantined",
        "created",
        "created",
        "created",
        "duplicate",
    ]


def test_purge_keeps_a_tombstone(app: App) -> None:
    raw = make_mail()
    ingest(app, raw)
    app.actions.act(1, "spam", "cli:test")
    assert app.actions.purge(1, "cli:test") == 1
    assert ticket(app, 1) is None
    out = ingest(app, raw)
    assert out.outcome == "duplicate" and "purged" in out.reason


def test_purge_of_a_live_ticket_is_refused(app: App) -> None:
    from mailbridge.errors import Refused

    ingest(app, make_mail())
    with pytest.raises(Refused, match="only closed, deleted, spam tickets can be purged"):
        app.actions.purge(1, "cli:test")


def test_dry_run_writes_nothing(app: App) -> None:
    out = app.ingestor.explain(make_mail(), Envelope(), FILE)
    assert out.outcome == "created"
    with app.store.unit() as s:
        assert repo.list_tickets(s) == []


def test_smtp_login_vouches_only_for_its_own_address(app: App) -> None:
    first = make_mail()
    ingest(app, first)
    as_alice = make_mail(sender="alice@example.com", in_reply_to=message_id_of(first))
    ingest(app, as_alice, Envelope("alice@example.com", ("support@example.com",), auth_user="bob"))
    assert ticket(app, 1).status == "new"


def test_mail_without_from_takes_its_author_from_sender_or_reply_to(app: App) -> None:
    raw = b"Reply-To: Dana <dana@customer.example>\r\nTo: support@example.com\r\nSubject: no from\r\nMessage-ID: <nofrom@x>\r\n\r\nhi\r\n"
    out = ingest(app, raw)
    t = ticket(app, out.ticket)
    assert (t.customer, t.customer_name) == ("dana@customer.example", "Dana")


def test_token_in_delivered_to_threads_a_bcc_copy(app: App) -> None:
    ingest(app, make_mail())
    token = ticket(app, 1).token
    bcc = make_mail(
        subject="fwd",
        to="someone@else.example",
        headers={"Delivered-To": f"support+{token}@example.com"},
    )
    assert ingest(app, bcc).ticket == 1


def test_a_batch_that_cannot_commit_gives_each_message_its_own_answer(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure ladder every answering source shares (`Ingestor.accept_each`): when the batch
    cannot commit as a whole, each mail is tried alone, and only the one that still fails gets
    an error; the others are stored and answered."""
    from mailbridge.ingest import batch

    real_commit = batch.commit
    poison = make_mail(subject="poison")

    def failing(store: Any, prepared: list[Any], *args: Any) -> Any:
        if len(prepared) > 1 or prepared[0].raw == poison:
            raise RuntimeError("the connection dropped")
        return real_commit(store, prepared, *args)

    monkeypatch.setattr(batch, "commit", failing)
    items = [
        (make_mail(subject="first"), Envelope(), FILE),
        (poison, Envelope(), FILE),
        (make_mail(subject="third"), Envelope(), FILE),
    ]
    first, second, third = app.ingestor.accept_each(items)
    assert isinstance(second, RuntimeError)
    assert not isinstance(first, Exception) and first.outcome == "created"
    assert not isinstance(third, Exception) and third.outcome == "created"
    with app.store.unit() as session:
        subjects = sorted(t.subject for t, _ in repo.list_tickets(session))
    assert subjects == ["first", "third"]
