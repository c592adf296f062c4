"""The outbox and its sender against a real aiosmtpd smarthost (SPEC sections 3 and 4).

Acknowledgements and notifications for customer mail, their headers as they arrive at the sink,
retries on 4xx, failure on 5xx, STARTTLS and AUTH, exactly-once delivery with two senders.
`Desk` drives the core the way the listener does (live SMTP source) with a set clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from bench.servers.smtp_sink import SmtpSink, tls_pair
from mailbridge.clock import FixedClock
from mailbridge.envelope import Envelope, Source
from mailbridge.errors import StorageUnavailable
from mailbridge.outbound.decide import FOOTER_MARK
from mailbridge.outbound.sender import OutboxSender, SenderConfig
from mailbridge.parse import parse
from mailbridge.storage import repo
from tests.desk import ACK, CUSTOMER, SUPPORT, TEAM, Desk, MakeDesk, only, text_of
from tests.mail import make_mail, message_id_of

# --- a customer writes ---------------------------------------------------------------------


def test_new_ticket_gets_an_acknowledgement_and_agents_a_notification(
    make_desk: MakeDesk, sink: SmtpSink, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    outcome, raw = desk.customer(attachments=[("photo.png", "image/png", b"\x89PNG fire")])
    assert outcome.outcome == "created"
    number = outcome.ticket
    assert number is not None and desk.ticket(number).status == "new"

    arrived = desk.deliver()
    assert len(arrived) == 2
    ack, note = only(arrived, CUSTOMER), only(arrived, TEAM)
    ticket = desk.ticket(number)
    token_address = f"support+{ticket.token}@example.com"
    customer_id = message_id_of(raw).strip("<>")

    msg = ack.message
    assert ack.mail_from == SUPPORT and ack.rcpt_tos == (CUSTOMER,)
    assert msg["From"].addresses[0].addr_spec == SUPPORT
    assert msg["Subject"] == f"Re: Printer on fire [#{number}]"
    assert msg["In-Reply-To"] == f"<{customer_id}>"
    own = msg["Message-ID"]
    assert own.endswith("@example.com>")
    assert msg["References"].split() == [f"<{customer_id}>", own]
    assert msg["Reply-To"].addresses[0].addr_spec == token_address
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Loop"] == SUPPORT and msg["X-Mailbridge-Ticket"] == str(number)
    # Outlook threads by the Thread-Index conversation id; we keep it on the ticket too
    assert parse(ack.content).thread_index == ticket.thread_index is not None
    assert f"[#{number}]" in text_of(msg)

    notification = note.message
    assert notification["Reply-To"].addresses[0].addr_spec == token_address
    assert notification["Subject"] == f"Printer on fire [#{number}]"
    assert notification["Auto-Submitted"] == "auto-generated"
    assert "Carol Customer" in str(notification["From"])
    assert "the printer is on fire" in text_of(notification) and FOOTER_MARK in text_of(
        notification
    )
    files = [(p.get_filename(), p.get_content()) for p in notification.iter_attachments()]
    assert files == [("photo.png", b"\x89PNG fire")]


def test_outbound_mail_is_stored_on_the_ticket_and_replies_to_it_thread(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink)
    number = desk.customer()[0].ticket
    ack = only(desk.deliver(), CUSTOMER).message
    stored = [(m.direction, m.author_kind, m.source) for m in desk.messages(number)]
    assert stored == [
        ("inbound", "customer", "smtp:127.0.0.1:2525"),
        ("outbound", "system", "outbound:ack"),
        ("outbound", "system", "outbound:notify"),
    ]
    assert desk.messages(number)[1].message_id == ack["Message-ID"].strip("<>")
    # the customer answers the acknowledgement: it threads by In-Reply-To
    reply = desk.customer(subject="Re: something else", in_reply_to=ack["Message-ID"])[0]
    assert (reply.outcome, reply.ticket) == ("appended", number)
    assert reply.reason.startswith("in-reply-to")


def test_the_bytes_are_written_at_delivery_and_kept_as_sent(
    make_desk: MakeDesk, sink: SmtpSink, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    outcome, customer_raw = desk.customer(attachments=[("photo.png", "image/png", b"\x89PNG fire")])
    number = outcome.ticket
    # ingest decided and stored everything but the MIME bytes: those wait for the sender
    rows = desk.outbox()
    assert [(r.kind, r.state) for r in rows] == [("ack", "queued"), ("notify", "queued")]
    ids = [r.id for r in rows]
    with desk.app.store.unit() as session:
        assert repo.outbox_specs(session, ids).keys() == set(ids)
    arrived = {r.rcpt_tos: r.content for r in desk.deliver()}
    with desk.app.store.unit() as session:
        assert repo.outbox_specs(session, ids) == {}
        for row in rows:
            copy = repo.get_message(session, row.message_pk, with_raw=True)
            # sent: the outbox keeps no second copy of the bytes
            assert repo.get_outbox(session, row.id).raw is None
            sent = arrived[(row.rcpt_tos,)]
            if row.kind == "ack":
                # the copy on the ticket is byte for byte what the smarthost received
                assert copy.raw == sent
            else:
                # a notification's copy: the header block as sent, byte for byte; its text
                # and attachments are the customer's mail, stored once on the ticket
                head = sent.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                mime = (b"content-type", b"content-transfer-encoding", b"mime-version")
                kept = [h for h in head if not h.lower().startswith(mime)]
                assert copy.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[: len(kept)] == kept
                assert b"PNG fire" not in copy.raw and b"on fire." not in copy.raw
                assert message_id_of(customer_raw).encode() in copy.raw
            assert copy.size == len(copy.raw) and copy.content_hash
            assert copy.subject == parse(copy.raw).subject == parse(sent).subject
            files = [(a.filename, a.size) for a in copy.attachments]
            assert files == ([("photo.png", 9)] if row.kind == "notify" else [])
    assert number is not None


def test_a_relay_that_rewrites_message_ids_cannot_break_the_thread(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink)
    number = desk.customer()[0].ticket
    ack = only(desk.deliver(), CUSTOMER).message
    # the customer's provider gave our mail a new Message-ID; their client still quotes our
    # References, which end with the id we chose
    reply = desk.customer(
        subject="Re: ?", references=ack["References"], in_reply_to="<rewritten@provider.example>"
    )[0]
    assert (reply.outcome, reply.ticket) == ("appended", number)


def test_a_customer_reply_notifies_agents_but_not_the_customer(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink)
    first, raw = desk.customer()
    desk.deliver()
    reply_id = "<reply-1@customer.example>"
    reply = desk.customer(
        subject="Re: Printer on fire",
        in_reply_to=message_id_of(raw),
        body="Still burning.\n",
        message_id=reply_id,
    )[0]
    assert reply.ticket == first.ticket
    arrived = desk.deliver()
    assert [r.rcpt_tos for r in arrived] == [(TEAM,)]
    assert "Still burning." in text_of(arrived[0].message)
    assert "Customer reply" in text_of(arrived[0].message)
    assert arrived[0].message["In-Reply-To"] == reply_id


def test_subject_with_line_breaks_cannot_inject_headers(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink)
    # encoded-words that decode to CR LF: a naive writer would start Bcc/Cc headers with them
    raw = (
        b"From: =?utf-8?q?Carol=0D=0ACc:_victim@example.net?= <carol@customer.example>\r\n"
        b"To: support@example.com\r\n"
        b"Subject: =?utf-8?q?Help=0D=0ABcc:_victim@example.net=0D=0AX-Evil:_1?=\r\n"
        b"Message-ID: <evil-1@customer.example>\r\n"
        b"Date: Mon, 02 Nov 2026 08:00:00 +0000\r\n"
        b"\r\n"
        b"Hello\r\n"
    )
    number = desk.accept(raw).ticket
    arrived = desk.deliver()
    assert len(arrived) == 2
    for received in arrived:
        assert "victim@example.net" not in received.rcpt_tos
        msg = received.message
        assert msg["Bcc"] is None and msg["X-Evil"] is None and msg["Cc"] is None
        assert f"[#{number}]" in msg["Subject"] and "\n" not in msg["Subject"]
        for line in received.content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            assert not line.lower().startswith((b"bcc:", b"x-evil:", b"cc:"))


# --- who gets no acknowledgement -----------------------------------------------------------


def test_acknowledgements_are_rate_limited_per_sender_per_hour(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock
) -> None:
    desk = make_desk(sink)
    for n in range(5):
        desk.customer(subject=f"Problem {n}")
    assert len(sink.to(CUSTOMER)) == 0
    desk.deliver()
    assert len(sink.to(CUSTOMER)) == 3
    assert len(sink.to(TEAM)) == 5  # agents hear of every ticket
    desk.customer(sender="dave@customer.example", subject="Mine")
    desk.deliver()
    assert len(sink.to("dave@customer.example")) == 1  # the limit is per sender
    clock.advance(minutes=61)
    desk.customer(subject="An hour later")
    desk.deliver()
    assert len(sink.to(CUSTOMER)) == 4


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("news@shop.example", {"Precedence": "bulk"}),
        ("members@list.example", {"List-Id": "<members.list.example>"}),
        ("no-reply@shop.example", {}),
        ("mailer-daemon@customer.example", {}),
        ("bob@agents.example.com", {}),  # an agent's address, unauthenticated: no ack to ourselves
        ("alice@example.com", {}),
    ],
)
def test_no_acknowledgement_to_bulk_lists_daemons_or_agents(
    make_desk: MakeDesk, sink: SmtpSink, sender: str, headers: dict[str, str]
) -> None:
    desk = make_desk(sink)
    outcome = desk.accept(make_mail(sender=sender, headers=headers), sender=sender)
    assert outcome.outcome == "created"
    arrived = desk.deliver()
    assert [r.rcpt_tos for r in arrived] == [(TEAM,)]


def test_acknowledgement_off_still_notifies(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, tickets="acknowledge = false")
    desk.customer()
    assert [r.rcpt_tos for r in desk.deliver()] == [(TEAM,)]


def test_custom_acknowledgement_template(
    make_desk: MakeDesk, sink: SmtpSink, tmp_path: Path
) -> None:
    template = tmp_path / "ack.txt"
    template.write_text("Subject: We got it: $subject\nDear $name, ticket $tag is open.\n")
    desk = make_desk(sink, tickets=ACK + f'ack_template = "{template}"')
    number = desk.customer()[0].ticket
    ack = only(desk.deliver(), CUSTOMER).message
    assert ack["Subject"] == f"We got it: Printer on fire [#{number}]"
    assert text_of(ack).strip() == f"Dear Carol Customer, ticket [#{number}] is open."


def test_backfill_sends_nothing(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink)
    desk.app.ingestor.accept(make_mail(), Envelope(), Source("file", "old.eml", live=False))
    assert desk.deliver() == [] and desk.outbox() == []


def test_rule_notice_tells_the_customer(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, tickets="acknowledge = false")
    number = desk.customer(message_id="<rule@customer.example>")[0].ticket
    desk.deliver()
    with desk.app.store.unit() as session:
        ticket = repo.get_ticket(session, number)
        desk.app.outbound.rule_notice(session, ticket, "auto-resolve", desk.clock())
    notice = only(desk.deliver(), CUSTOMER).message
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["In-Reply-To"] == "<rule@customer.example>"
    assert f"[#{number}]" in text_of(notice)


# --- delivery ------------------------------------------------------------------------------


def test_421_then_250_is_delivered_once(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock
) -> None:
    results: list[str] = []  # what the metrics callback hears
    desk = make_desk(sink, tickets="acknowledge = false", on_delivery=results.append)
    sink.script("421 4.3.2 Try again later")
    desk.customer()
    assert desk.deliver() == []
    row = desk.outbox()[0]
    assert (row.state, row.attempts, row.last_error) == ("queued", 1, "421 4.3.2 Try again later")
    assert row.next_attempt_at >= clock() + timedelta(minutes=1)
    assert desk.deliver() == []  # not due yet: nothing is sent early
    clock.advance(minutes=2, seconds=30)
    assert len(desk.deliver()) == 1
    row = desk.outbox()[0]
    assert (row.state, row.attempts, row.sent_at) == ("sent", 2, clock())
    clock.advance(hours=5)
    assert desk.deliver() == []
    assert [a.reply[:3] for a in sink.attempts] == ["421", "250"]
    assert results == ["retry", "sent"]


def test_550_fails_with_the_servers_reason(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock
) -> None:
    desk = make_desk(sink, tickets="acknowledge = false")
    sink.script("550 5.7.1 Message rejected as spam")
    number = desk.customer()[0].ticket
    desk.deliver()
    row = desk.outbox()[0]
    assert (row.state, row.attempts, row.last_error) == (
        "failed",
        1,
        "550 5.7.1 Message rejected as spam",
    )
    failed = [e for e in desk.events(number) if e.kind == "delivery-failed"]
    assert len(failed) == 1 and "550 5.7.1" in (failed[0].detail or "")
    clock.advance(days=1)
    desk.deliver()
    assert len(sink.attempts) == 1


def test_refused_recipient_fails_and_others_are_still_delivered(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink)
    sink.refuse_rcpt(CUSTOMER, "550 5.1.1 No such user")
    desk.customer()
    arrived = desk.deliver()
    assert [r.rcpt_tos for r in arrived] == [(TEAM,)]
    states = {r.kind: (r.state, r.last_error) for r in desk.outbox()}
    assert states["ack"] == ("failed", f"{CUSTOMER}: 550 5.1.1 No such user")
    assert states["notify"] == ("sent", None)


def test_unreachable_smarthost_backs_off_then_fails(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock
) -> None:
    from bench.servers.ports import free_port

    outbound = f'[outbound]\nsmarthost = "127.0.0.1"\nport = {free_port()}\ntimeout = "2s"\nmax_attempts = 4'
    desk = make_desk(sink, tickets="acknowledge = false", outbound=outbound)
    desk.customer()
    delays = []
    for _ in range(4):
        before = clock()
        desk.deliver()
        row = desk.outbox()[0]
        delays.append(row.next_attempt_at - before)
        clock.now = row.next_attempt_at
    assert (row.state, row.attempts) == ("failed", 4)
    assert "ConnectionRefusedError" in (row.last_error or "")
    minutes = [d.total_seconds() / 60 for d in delays[:3]]
    assert 1 <= minutes[0] <= 1.1 and 2 <= minutes[1] <= 2.2 and 4 <= minutes[2] <= 4.4


def test_no_smarthost_keeps_mail_queued(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, outbound="")
    desk.customer()
    assert desk.sender.deliver_due() == 0
    assert {r.state for r in desk.outbox()} == {"queued"}


def test_starttls_and_auth_at_the_smarthost(
    make_desk: MakeDesk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = tls_pair(tmp_path)
    monkeypatch.setenv("MB_TEST_SMTP_PASSWORD", "s3cret")
    with SmtpSink.running(
        tls_context=server, require_starttls=True, users={"mb": "s3cret"}
    ) as tls_sink:
        outbound = tls_sink.outbound_toml(
            starttls=True, username="mb", password_env="MB_TEST_SMTP_PASSWORD"
        )
        desk = make_desk(
            tls_sink, tickets="acknowledge = false", outbound=outbound, tls_context=client
        )
        desk.customer()
        arrived = desk.deliver()
    assert [(r.tls, r.auth_user) for r in arrived] == [(True, "mb")]


def test_wrong_smarthost_password_is_retried_not_failed(
    make_desk: MakeDesk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = tls_pair(tmp_path)
    monkeypatch.setenv("MB_TEST_SMTP_PASSWORD", "wrong")
    with SmtpSink.running(tls_context=server, users={"mb": "s3cret"}) as tls_sink:
        outbound = tls_sink.outbound_toml(
            starttls=True, username="mb", password_env="MB_TEST_SMTP_PASSWORD"
        )
        desk = make_desk(
            tls_sink, tickets="acknowledge = false", outbound=outbound, tls_context=client
        )
        desk.customer()
        assert desk.deliver() == []
    row = desk.outbox()[0]
    # a bad password is our configuration's fault, not the message's: it stays queued
    assert row.state == "queued" and (row.last_error or "").startswith("smarthost: 535")


def test_two_senders_deliver_each_message_exactly_once(
    make_desk: MakeDesk, sink: SmtpSink, db_url: str
) -> None:
    desk = make_desk(sink, db_url, tickets="acknowledge = false", batch_size=5)
    for n in range(40):
        desk.customer(subject=f"Problem {n}", sender=f"c{n}@customer.example")
    other = OutboxSender(
        desk.app.store, SenderConfig.from_settings(desk.app.settings), desk.clock, batch_size=5
    )
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def run(sender: OutboxSender) -> None:
        barrier.wait()
        counts.append(sender.deliver_due())

    threads = [threading.Thread(target=run, args=(s,)) for s in (desk.sender, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [r.message["Message-ID"] for r in sink.received]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert sum(counts) == 40
    assert {r.state for r in desk.outbox()} == {"sent"}


def test_the_running_component_delivers_promptly_and_stops(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink, tickets="acknowledge = false", poll_interval=30.0)

    async def scenario() -> None:
        sender = desk.sender
        await sender.start()
        try:
            await asyncio.to_thread(desk.customer)
            sender.kick()  # the daemon kicks after ingest commits; without it we would wait 30 s
            await asyncio.to_thread(sink.wait_for, 1, 10.0)
        finally:
            await asyncio.wait_for(sender.stop(), 10)

    asyncio.run(scenario())
    assert [r.rcpt_tos for r in sink.received] == [(TEAM,)]


# --- EHLO --------------------------------------------------------------------------------


def test_ehlo_names_the_configured_hostname(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, tickets="acknowledge = false", smtp='hostname = "mb.example.test"')
    desk.customer()
    assert [r.helo for r in desk.deliver()] == ["mb.example.test"]


def test_ehlo_falls_back_to_the_machines_fqdn(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, tickets="acknowledge = false")
    desk.customer()
    helo = [r.helo for r in desk.deliver()]
    # smtplib's own fallback is the address literal "[127.0.0.1]" when the name has no dot
    assert helo == [socket.getfqdn()] and not helo[0].startswith("[")


# --- acknowledgements and backscatter ------------------------------------------------------


def test_forged_senders_of_one_domain_get_at_most_the_domain_limit(
    make_desk: MakeDesk, sink: SmtpSink
) -> None:
    desk = make_desk(sink, tickets="acknowledge = true")  # the default limits
    limit = desk.app.settings.tickets.ack_max_per_domain_per_hour
    for n in range(50):
        victim = f"victim+{n}@victim.test"
        raw = make_mail(sender=victim, subject=f"Buy cheap pills {n}")
        assert desk.accept(raw, sender=victim).outcome == "created"
    arrived = desk.deliver()
    acks = [r for r in arrived if r.rcpt_tos[0].endswith("@victim.test")]
    assert len(acks) == limit < 50
    assert len([r for r in arrived if r.rcpt_tos == (TEAM,)]) == 50  # agents hear of all


def test_acknowledgements_are_limited_in_total_per_hour(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock
) -> None:
    desk = make_desk(sink, tickets=ACK + "ack_max_per_hour = 4")
    for n in range(6):
        desk.customer(sender=f"c{n}@domain{n}.example", subject=f"Problem {n}")
    assert len([r for r in desk.deliver() if r.rcpt_tos != (TEAM,)]) == 4
    clock.advance(minutes=61)
    desk.customer(sender="late@domain9.example")
    assert [r.rcpt_tos for r in desk.deliver() if r.rcpt_tos != (TEAM,)] == [
        ("late@domain9.example",)
    ]


@pytest.mark.parametrize(
    ("results", "acknowledged"),
    [
        (["mx.example.com; dmarc=fail (p=reject) header.from=customer.example"], False),
        (["mx.example.com; spf=pass smtp.mailfrom=customer.example"], True),
        (["mx.example.com; dmarc=pass header.from=customer.example"], True),
        # a sender's own header below ours cannot overrule it, nor can one from a stranger
        (
            [
                "mx.example.com; dmarc=fail header.from=customer.example",
                "mx.example.com; dmarc=pass header.from=customer.example",
            ],
            False,
        ),
        (["evil.example; dmarc=fail header.from=customer.example"], True),
        # a comment cannot hide the verdict, nor fake one
        (["mx.example.com (dmarc=pass; x); dmarc=fail header.from=customer.example"], False),
        (["mx.example.com; spf=none (dmarc=fail) smtp.mailfrom=customer.example"], True),
    ],
)
def test_no_acknowledgement_for_mail_that_failed_dmarc(
    make_desk: MakeDesk, sink: SmtpSink, results: list[str], acknowledged: bool
) -> None:
    desk = make_desk(sink)
    raw = make_mail()
    head = "".join(f"Authentication-Results: {r}\r\n" for r in results).encode()
    outcome = desk.accept(head + raw)
    assert outcome.outcome == "created"
    arrived = desk.deliver()
    assert len(sink.to(CUSTOMER)) == int(acknowledged)
    assert [r.rcpt_tos for r in arrived if r.rcpt_tos == (TEAM,)] == [(TEAM,)]


# --- claims, leases and database errors ----------------------------------------------------


@contextlib.contextmanager
def failing_once(desk: Desk, column: str) -> Iterator[list[str]]:
    """The database fails the next update of the outbox that sets `column`, as a killed
    PostgreSQL backend or a full disk would; the list collects what failed."""
    failed: list[str] = []

    def fail(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        head = sql.split("WHERE")[0]
        if not failed and head.startswith("UPDATE outbox SET") and f" {column}=" in head:
            failed.append(sql)
            raise OperationalError(sql, params, Exception("server closed the connection"))

    engine = desk.app.store.engine
    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield failed
    finally:
        event.remove(engine, "before_cursor_execute", fail)


def test_a_dead_senders_claim_runs_out_after_the_short_lease(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock, db_url: str
) -> None:
    desk = make_desk(sink, db_url, tickets="acknowledge = false")
    for n in range(3):
        desk.customer(sender=f"c{n}@customer.example")
    claim = desk.sender.claim()  # a node claims the batch ...
    assert claim is not None and len(claim.jobs) == 3
    other = OutboxSender(desk.app.store, SenderConfig.from_settings(desk.app.settings), clock)
    clock.advance(seconds=40)
    assert other.deliver_due() == 0
    claim.renew()  # ... its heartbeat keeps the rows while it sends ...
    clock.advance(seconds=40)
    assert other.deliver_due() == 0  # 80 s after the claim, 40 after the renewal
    clock.advance(seconds=21)  # ... then it dies: nobody renews
    assert other.deliver_due() == 3
    assert len(sink.received) == 3 and {r.state for r in desk.outbox()} == {"sent"}
    claim.renew()  # the node was only paused: it learns that the rows are no longer its own
    assert claim.ids == set()


def test_a_database_error_between_claim_and_send_sends_each_mail_once(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    desk.customer()  # an acknowledgement and a notification
    with failing_once(desk, "spec") as failed, pytest.raises(StorageUnavailable):
        desk.sender.deliver_due()
    assert failed and sink.received == []
    clock.advance(seconds=61)  # the claim ran out: this node (or another) takes them again
    assert len(desk.deliver()) == 2
    clock.advance(hours=3)
    assert desk.deliver() == []
    assert len(sink.received) == 2 and {r.state for r in desk.outbox()} == {"sent"}


def test_a_failed_commit_of_sent_is_recorded_later_not_sent_again(
    make_desk: MakeDesk, sink: SmtpSink, clock: FixedClock, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    desk.customer()
    # the commit of the smarthost's 250 fails
    with failing_once(desk, "state") as failed, pytest.raises(StorageUnavailable):
        desk.sender.deliver_due()
    assert failed
    assert len(sink.received) == 1  # the smarthost has the first mail
    assert desk.outbox()[0].state == "queued"  # ... and the database does not know it yet
    clock.advance(minutes=5)  # far past the lease
    desk.deliver()  # the kept result is recorded first, then the second mail is sent
    assert sorted(r.rcpt_tos for r in sink.received) == [(CUSTOMER,), (TEAM,)]
    assert [(r.state, r.attempts) for r in desk.outbox()] == [("sent", 1), ("sent", 1)]
    clock.advance(hours=3)
    assert desk.deliver() == []


# --- storage -------------------------------------------------------------------------------


def stored_bytes(desk: Desk) -> int:
    """The mail bytes the database holds: raw and text of messages, bytes and specs of the outbox."""
    sums = (
        "SELECT coalesce(sum(length(raw)), 0) + coalesce(sum(length(body_text)), 0) FROM messages",
        "SELECT coalesce(sum(length(raw)), 0) + coalesce(sum(length(spec)), 0) FROM outbox",
    )
    with desk.app.store.unit() as session:
        return sum(int(session.execute(text(q)).scalar_one()) for q in sums)


def test_a_notified_and_acknowledged_mail_is_stored_about_once(
    make_desk: MakeDesk, sink: SmtpSink, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    scan = bytes(range(256)) * 300  # 75 KB: about 100 KB of mail in base64
    outcome, raw = desk.customer(attachments=[("scan.pdf", "application/pdf", scan)])
    assert len(raw) > 100_000
    arrived = desk.deliver()
    note = only(arrived, TEAM).message
    assert [a.get_content() for a in note.iter_attachments()] == [scan]  # agents get the file
    # the notification's copy refers to the customer's stored mail instead of holding it again
    # (before: raw, the notification twice and the outbox: over 3 times the mail)
    assert stored_bytes(desk) < 1.15 * len(raw)
    assert outcome.ticket is not None
