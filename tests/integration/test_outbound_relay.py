"""Nothing silently dropped (issue 14 item 4): a reply that cannot reach the customer is
recorded on the ticket and the agent who wrote it is told why; an internationalised address
goes out with SMTPUTF8 when the smarthost offers it. A real aiosmtpd sink is the smarthost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers.smtp_sink import SmtpSink
from tests.desk import ALICE, CUSTOMER, TEAM, Desk, MakeDesk, agent_answer, only, text_of
from tests.mail import make_mail

JOERG = "jörg@exämple.test"


def customer_mail(sender: str, name: str = "Jörg Müller") -> bytes:
    """Mail as an SMTPUTF8 client writes it: the address in UTF-8, unencoded."""
    head = (
        f"From: {name} <{sender}>\r\n"
        "To: support@example.com\r\n"
        "Subject: Drucker brennt\r\n"
        f"Message-ID: <{abs(hash(sender))}@customer.example>\r\n"
        "Date: Mon, 02 Nov 2026 08:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return (head + "Der Drucker brennt.\r\n").encode()


def open_and_answer(desk: Desk, sender: str) -> int:
    """The customer writes, an agent answers the notification; returns the ticket."""
    outcome = desk.accept(customer_mail(sender), sender=sender)
    assert outcome.outcome == "created" and outcome.ticket is not None
    note = only(desk.deliver(), TEAM)
    agent_answer(desk, note, "Bitte den Stecker ziehen.")
    return outcome.ticket


def failures(desk: Desk, number: int) -> list[str]:
    return [e.detail or "" for e in desk.events(number) if e.kind == "delivery-failed"]


@pytest.fixture
def plain_sink() -> Iterator[SmtpSink]:
    with SmtpSink.running() as running:
        yield running


@pytest.fixture
def utf8_sink() -> Iterator[SmtpSink]:
    with SmtpSink.running(smtputf8=True) as running:
        yield running


def test_smtputf8_carries_an_internationalised_customer_address(
    make_desk: MakeDesk, utf8_sink: SmtpSink
) -> None:
    desk = make_desk(utf8_sink, tickets="acknowledge = false")
    number = open_and_answer(desk, JOERG)
    relayed = only(desk.deliver(), JOERG)
    assert relayed.smtputf8
    assert relayed.rcpt_tos == (JOERG,)
    head = relayed.content.split(b"\r\n\r\n", 1)[0].decode("utf-8")  # RFC 6532 headers
    assert f"\r\nTo: Jörg Müller <{JOERG}>\r\n" in head
    assert "Bitte den Stecker ziehen." in text_of(relayed.message)
    assert failures(desk, number) == []


def test_without_smtputf8_the_agent_is_told_and_the_ticket_records_why(
    make_desk: MakeDesk, plain_sink: SmtpSink
) -> None:
    desk = make_desk(plain_sink, tickets="acknowledge = false")
    number = open_and_answer(desk, JOERG)
    assert desk.deliver() == []  # the reply cannot go: the smarthost has no SMTPUTF8
    relay = next(r for r in desk.outbox() if r.kind == "relay")
    assert relay.state == "failed" and "SMTPUTF8" in (relay.last_error or "")
    assert any(JOERG in d and "SMTPUTF8" in d for d in failures(desk, number))
    arrived = desk.deliver()
    notice = only(arrived, ALICE)  # the agent who wrote the reply ...
    assert [sorted(r.rcpt_tos) for r in arrived] == [sorted((ALICE, TEAM))]  # and the team
    text = text_of(notice.message)
    assert JOERG in text and "SMTPUTF8" in text
    assert notice.message["Subject"].startswith("Undelivered reply:")


def test_a_quoted_local_part_is_refused_with_a_notice_at_once(
    make_desk: MakeDesk, plain_sink: SmtpSink
) -> None:
    desk = make_desk(plain_sink, tickets="acknowledge = false")
    quoted = '"jo smith"@customer.example'
    number = open_and_answer(desk, quoted)
    arrived = desk.deliver()
    assert [r for r in desk.outbox() if r.kind == "relay"] == []
    notice = only(arrived, ALICE)
    assert "cannot be written safely" in text_of(notice.message)
    assert any("jo smith" in d for d in failures(desk, number))


def test_an_internationalised_participant_cannot_cost_the_customer_the_reply(
    make_desk: MakeDesk, plain_sink: SmtpSink
) -> None:
    desk = make_desk(plain_sink, tickets="acknowledge = false")
    # the customer copies a colleague with an internationalised address (RFC 6532 header);
    # make_mail cannot write one, so it goes in afterwards
    raw = make_mail(cc="Jörg <placeholder@customer.example>")
    raw = raw.replace(b"placeholder@customer.example", "jörg@customer.example".encode())
    outcome = desk.accept(raw)
    assert outcome.ticket is not None
    note = only(desk.deliver(), TEAM)
    agent_answer(desk, note, "Please unplug it.")
    arrived = desk.deliver()
    assert [r.rcpt_tos for r in arrived] == [(CUSTOMER,)]  # the customer has the reply
    relays = {r.rcpt_tos: r.state for r in desk.outbox() if r.kind == "relay"}
    assert relays == {CUSTOMER: "sent", "jörg@customer.example": "failed"}
    notice = only(desk.deliver(), ALICE)
    assert "jörg@customer.example" in text_of(notice.message)
