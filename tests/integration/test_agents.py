"""Agents by email (SPEC section 3): authenticated replies relayed to the customer, commands,
spoofing, loops and relaying only to the ticket's own people. A real aiosmtpd sink is the
smarthost; the last test also speaks SMTP to the real listener.
"""

from __future__ import annotations

import base64
import smtplib
import time
from datetime import timedelta
from pathlib import Path

from bench.servers.ports import free_port
from bench.servers.smtp_sink import Received, SmtpSink
from mailbridge.auth_users import hash_password
from mailbridge.clock import FixedClock
from mailbridge.outbound.decide import FOOTER_MARK
from mailbridge.storage import repo
from tests.configs import mailbridge_toml
from tests.desk import (
    AGENT_FROM,
    ALICE,
    CUSTOMER,
    DKIM_PASS,
    SUPPORT,
    TEAM,
    Desk,
    MakeDesk,
    agent_answer,
    answer,
    only,
    open_ticket,
    participants,
    text_of,
)
from tests.mail import make_mail

# --- the happy path ------------------------------------------------------------------------


def test_agent_reply_is_relayed_then_the_customer_answers_it(
    make_desk: MakeDesk, sink: SmtpSink, db_url: str
) -> None:
    desk = make_desk(sink, db_url)
    number, note = open_ticket(desk, message_id="<first@customer.example>")
    outcome = agent_answer(desk, note, "Please unplug it.\n\nAlice")
    assert (outcome.ticket, desk.ticket(number).status) == (number, "answered")
    assert "relayed" in outcome.reason

    relayed = desk.deliver()
    assert [r.rcpt_tos for r in relayed] == [(CUSTOMER,)]
    msg = relayed[0].message
    ticket = desk.ticket(number)
    assert text_of(msg).strip() == "Please unplug it.\n\nAlice"  # no quote, no footer
    assert str(msg["From"]) == f"Alice Agent via Support <{SUPPORT}>"
    assert msg["Reply-To"].addresses[0].addr_spec == f"support+{ticket.token}@example.com"
    assert msg["Subject"] == f"Re: Printer on fire [#{number}]"
    assert msg["In-Reply-To"] == "<first@customer.example>"
    refs = msg["References"].split()
    assert refs[0] == "<first@customer.example>" and refs[-1] == msg["Message-ID"]
    assert msg["Auto-Submitted"] is None and msg["X-Loop"] == SUPPORT
    stored = desk.messages(number)[-1]
    assert (stored.direction, stored.author_kind, stored.message_id) == (
        "outbound",
        "agent",
        msg["Message-ID"][1:-1],
    )

    # the customer answers the relayed mail: same ticket, open again, agents told
    back = desk.customer(
        subject=f"Re: {msg['Subject']}", in_reply_to=msg["Message-ID"], body="Done, thanks.\n"
    )[0]
    assert (back.outcome, back.ticket) == ("appended", number)
    assert desk.ticket(number).status == "open"
    assert [r.rcpt_tos for r in desk.deliver()] == [(TEAM,)]


def test_trusted_authentication_results_give_agent_authority(desk: Desk) -> None:
    number, note = open_ticket(desk)
    raw = answer(note, "Fixed.", headers={"Authentication-Results": DKIM_PASS})
    desk.accept(raw, sender=ALICE, rcpts=(note.message["Reply-To"].addresses[0].addr_spec,))
    assert desk.ticket(number).status == "answered"
    assert [r.rcpt_tos for r in desk.deliver()] == [(CUSTOMER,)]


def test_outlook_threads_by_thread_index_alone(desk: Desk) -> None:
    number, note = open_ticket(desk)
    # Outlook answers with our Thread-Index plus a child block of its own, even when a gateway
    # on the way dropped In-Reply-To/References and the subject lost its tag
    index = base64.b64encode(
        base64.b64decode(note.message["Thread-Index"]) + b"\x00\x11\x22\x33\x44"
    )
    raw = make_mail(
        sender=AGENT_FROM,
        to=SUPPORT,
        subject="Re: printer",
        body="On my way.",
        headers={"Thread-Index": index.decode()},
    )
    outcome = desk.accept(raw, sender=ALICE, auth_user=ALICE)
    assert outcome.ticket == number and outcome.reason.startswith("thread-index")
    assert desk.ticket(number).status == "answered"


def test_agent_attachments_are_relayed(desk: Desk) -> None:
    _, note = open_ticket(desk)
    agent_answer(
        desk,
        note,
        "The manual is attached.",
        attachments=[("manual.pdf", "application/pdf", b"%PDF-1.7 ...")],
    )
    msg = only(desk.deliver(), CUSTOMER).message
    assert [(p.get_filename(), p.get_content()) for p in msg.iter_attachments()] == [
        ("manual.pdf", b"%PDF-1.7 ...")
    ]


def test_display_names_can_be_turned_off(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink, agents="display_names = false")
    _, note = open_ticket(desk)
    agent_answer(desk, note, "Hello")
    assert str(only(desk.deliver(), CUSTOMER).message["From"]) == f"Support <{SUPPORT}>"


def test_agents_hear_when_a_relayed_reply_bounces_at_the_smarthost(
    desk: Desk, sink: SmtpSink
) -> None:
    number, note = open_ticket(desk)
    sink.refuse_rcpt(CUSTOMER, "550 5.1.1 <carol@customer.example>: mailbox unavailable")
    agent_answer(desk, note, "Please unplug it.")
    assert desk.deliver() == []
    relay = next(r for r in desk.outbox() if r.kind == "relay")
    assert relay.state == "failed" and "550 5.1.1" in (relay.last_error or "")
    notice = only(desk.deliver(), TEAM).message
    assert notice["Subject"] == f"Undelivered reply: Printer on fire [#{number}]"
    assert "550 5.1.1" in text_of(notice) and notice["Auto-Submitted"] == "auto-generated"


# --- commands ------------------------------------------------------------------------------


def test_postpone_command_is_applied_and_removed(desk: Desk, clock: FixedClock) -> None:
    number, note = open_ticket(desk)
    agent_answer(desk, note, "#postpone 2d\n\nI will check back on Wednesday.")
    ticket = desk.ticket(number)
    assert ticket.status == "postponed"
    assert ticket.postponed_until == clock() + timedelta(days=2)
    assert (
        text_of(only(desk.deliver(), CUSTOMER).message).strip() == "I will check back on Wednesday."
    )
    kinds = [(e.kind, e.to_status) for e in desk.events(number)]
    assert kinds[-2:] == [("agent-reply", "answered"), ("postpone", "postponed")]


def test_a_commands_only_reply_relays_nothing(desk: Desk) -> None:
    number, note = open_ticket(desk)
    outcome = agent_answer(desk, note, "#resolve")  # the quoted notification is below it
    assert desk.ticket(number).status == "resolved"
    assert "recorded" in outcome.reason
    assert desk.deliver() == []


def test_a_note_is_recorded_not_relayed(desk: Desk) -> None:
    number, note = open_ticket(desk)
    agent_answer(desk, note, "#note\n\nCustomer called, it is the toner.")
    assert desk.deliver() == []
    assert desk.ticket(number).status == "new"
    with desk.app.store.unit() as session:
        assert "it is the toner" in repo.ticket_messages(session, number)[-1].body_text


def test_a_refused_command_is_answered_with_a_notice(desk: Desk) -> None:
    number, note = open_ticket(desk)
    agent_answer(desk, note, "#close")
    assert desk.ticket(number).status == "closed"
    outcome = agent_answer(desk, note, "#resolve", message_id="<second@example.com>")
    assert "refused" in outcome.reason and desk.ticket(number).status == "closed"
    notice = only(desk.deliver(), ALICE).message
    assert notice["Auto-Submitted"] == "auto-replied"
    assert notice["In-Reply-To"] == "<second@example.com>"
    assert f"[#{number}]" in notice["Subject"] and "#resolve" in text_of(notice)


def test_a_mistyped_command_is_answered_with_a_notice(desk: Desk) -> None:
    _, note = open_ticket(desk)
    agent_answer(desk, note, "#resolve\n#clsoe\n\nThanks for your patience.")
    arrived = desk.deliver()
    assert text_of(only(arrived, CUSTOMER).message).strip() == "Thanks for your patience."
    assert "#clsoe" in text_of(only(arrived, ALICE).message)


# --- safety --------------------------------------------------------------------------------


def test_spoofed_agent_from_is_customer_mail(desk: Desk) -> None:
    number, note = open_ticket(desk)
    raw = answer(note, "#close\n\nClosing this, all good.")
    outcome = desk.accept(
        raw, sender=ALICE, rcpts=(note.message["Reply-To"].addresses[0].addr_spec,)
    )
    assert outcome.ticket == number
    assert desk.ticket(number).status == "new"  # customer mail on a new ticket: no change
    arrived = desk.deliver()
    assert CUSTOMER not in {r for m in arrived for r in m.rcpt_tos}  # nothing relayed
    assert [e.kind for e in desk.events(number)][-1] == "unauthenticated-agent"


def test_spoofed_close_on_an_answered_ticket_is_a_customer_reply(desk: Desk) -> None:
    number, note = open_ticket(desk)
    agent_answer(desk, note, "We are on it.")
    desk.deliver()
    raw = answer(note, "#close", message_id="<forged@attacker.example>")
    desk.accept(raw, sender=ALICE, rcpts=(note.message["Reply-To"].addresses[0].addr_spec,))
    # SPEC 3: treated as customer mail, so the customer-mail rule applies (answered -> open);
    # the command itself is never applied and nothing reaches the customer
    assert desk.ticket(number).status == "open"
    assert CUSTOMER not in {r for m in desk.deliver() for r in m.rcpt_tos}


def test_untrusted_authserv_id_gives_no_authority(desk: Desk) -> None:
    number, note = open_ticket(desk)
    forged = DKIM_PASS.replace("mx.example.com", "mx.attacker.example")
    raw = answer(note, "#resolve\n\nBye", headers={"Authentication-Results": forged})
    desk.accept(raw, sender=ALICE, rcpts=(note.message["Reply-To"].addresses[0].addr_spec,))
    assert desk.ticket(number).status == "new"
    assert CUSTOMER not in {r for m in desk.deliver() for r in m.rcpt_tos}


def test_relay_reaches_participants_only_never_the_agents_cc(desk: Desk) -> None:
    number, note = open_ticket(desk, cc="Dave <dave@customer.example>")
    agent_answer(desk, note, "Both of you: unplug it.", cc="mallory@evil.example")
    relayed = only(desk.deliver(), CUSTOMER)
    assert sorted(relayed.rcpt_tos) == [CUSTOMER, "dave@customer.example"]
    assert relayed.message["Cc"].addresses[0].addr_spec == "dave@customer.example"
    assert "mallory@evil.example" not in participants(desk, number)


def test_agent_writing_to_the_customer_directly_is_recorded_not_relayed(desk: Desk) -> None:
    number, _ = open_ticket(desk, message_id="<direct@customer.example>")
    raw = make_mail(
        sender=AGENT_FROM,
        to=CUSTOMER,
        cc=SUPPORT,
        subject="Re: Printer on fire",
        in_reply_to="<direct@customer.example>",
    )
    outcome = desk.accept(raw, sender=ALICE, rcpts=(SUPPORT,), auth_user=ALICE)
    assert "recorded" in outcome.reason
    assert desk.ticket(number).status == "answered"
    assert desk.deliver() == []  # the customer has it already


def test_our_notification_coming_back_is_not_a_ticket(desk: Desk) -> None:
    number, note = open_ticket(desk)
    # the team list also delivers to the support mailbox
    outcome = desk.accept(note.content, sender=SUPPORT, rcpts=(SUPPORT,))
    assert outcome.outcome in ("appended", "duplicate")
    assert desk.deliver() == []
    with desk.app.store.unit() as session:
        assert len(repo.all_tickets(session)) == 1
    assert desk.ticket(number).status == "new"


# --- loops ---------------------------------------------------------------------------------


def auto_reply(to: Received, sender: str, rfc3834: bool = True) -> bytes:
    """An out-of-office reply. RFC 3834 ones thread and say so; naive ones do neither."""
    msg = to.message
    if rfc3834:
        reply_to = msg["Reply-To"].addresses[0].addr_spec
        return make_mail(
            sender=sender,
            to=reply_to,
            subject=f"Automatic reply: {msg['Subject']}",
            in_reply_to=msg["Message-ID"],
            headers={"Auto-Submitted": "auto-replied"},
            body="I am away.\n",
        )
    return make_mail(
        sender=sender, to=SUPPORT, subject="I am out of the office", body="I am away.\n"
    )


def ping_pong(desk: Desk, rounds: int, rfc3834: bool) -> None:
    """Every mail that reaches the customer or the team is answered by an autoresponder."""
    for _ in range(rounds):
        for mail in desk.deliver():
            for rcpt in mail.rcpt_tos:
                # a naive one answers the envelope sender, not the Reply-To with the ticket token
                to = mail.message["Reply-To"].addresses[0].addr_spec if rfc3834 else mail.mail_from
                desk.accept(auto_reply(mail, rcpt, rfc3834), sender=rcpt, rcpts=(to,))


def test_autoresponders_answering_our_mail_make_no_ticket_and_no_second_ack(
    desk: Desk, sink: SmtpSink
) -> None:
    number, note = open_ticket(desk)
    assert len(sink.to(CUSTOMER)) == 1
    ping_pong(desk, 50, rfc3834=True)  # the round open_ticket delivered is answered in round 1
    desk.accept(auto_reply(note, TEAM), sender=TEAM, rcpts=(SUPPORT,))
    with desk.app.store.unit() as session:
        assert len(repo.all_tickets(session)) == 1
    assert len(sink.to(CUSTOMER)) == 1 and len(sink.to(TEAM)) == 1
    assert desk.ticket(number).status == "new"
    assert desk.deliver() == []


def test_a_naive_autoresponder_gets_at_most_the_hourly_acknowledgements(
    desk: Desk, sink: SmtpSink
) -> None:
    desk.customer()
    ping_pong(desk, 50, rfc3834=False)
    # ack_max_per_sender_per_hour acknowledgements, then the customer's side of the loop starves
    assert len(sink.to(CUSTOMER)) == 3
    # agents hear of the customer's 4 tickets; the team's own out-of-office mail (4 tickets)
    # is never notified back to the team, so that side cannot loop either
    assert len(sink.to(TEAM)) == 4
    with desk.app.store.unit() as session:
        customers = sorted(t.customer for t in repo.all_tickets(session))
    assert customers == [CUSTOMER] * 4 + [TEAM] * 4
    assert desk.deliver() == []


# --- end to end through the real listener --------------------------------------------------


def test_end_to_end_through_the_smtp_listener(
    tmp_path: Path, sqlite_url: str, sink: SmtpSink
) -> None:
    from tests.helpers_daemon import InProcessDaemon, settings_from

    users = tmp_path / "smtp-users"
    users.write_text(f"{ALICE}:{hash_password('wonderland')}\n")
    port = free_port()
    config = tmp_path / "mailbridge.toml"
    config.write_text(
        mailbridge_toml(
            sqlite_url,
            listen=f"127.0.0.1:{port}",
            smtp=f'auth_users_file = "{users}"\nauth_require_tls = false\n',
            agents=f'addresses = ["{ALICE}"]\nnotify = ["{TEAM}"]\n',
            tickets="acknowledge = true\n",
            outbound=sink.outbound_toml(),
        )
    )

    def send(raw: bytes, sender: str, rcpt: str, login: bool = False) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            if login:
                smtp.login(ALICE, "wonderland")
            smtp.sendmail(sender, [rcpt], raw.replace(b"\n", b"\r\n"))

    def wait_for(count: int) -> None:
        # the daemon's own outbox sender delivers right after each commit
        deadline = time.monotonic() + 10
        while len(sink.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    with InProcessDaemon(settings_from(config)) as daemon:
        app = daemon.daemon.app
        send(make_mail(), CUSTOMER, SUPPORT)
        wait_for(2)
        assert {r.rcpt_tos for r in sink.received} == {(CUSTOMER,), (TEAM,)}
        note = sink.to(TEAM)[0]
        assert FOOTER_MARK in text_of(note.message)
        send(
            answer(note, "#resolve\n\nIt works again."),
            ALICE,
            note.message["Reply-To"].addresses[0].addr_spec,
            login=True,
        )
        wait_for(3)
        relayed = sink.to(CUSTOMER)[-1].message
        assert text_of(relayed).strip() == "It works again."
        with app.store.unit() as session:
            assert repo.all_tickets(session)[0].status == "resolved"
