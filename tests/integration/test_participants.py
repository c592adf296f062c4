"""Who becomes a participant, and how many (issue 14, item 3), against a real aiosmtpd sink.

Participants are the addresses an agent's reply is relayed to, so only the ticket's own people
(its customer, a participant, an agent writing to the customer) can add them, and never more
than `[tickets] max_participants`.
"""

from __future__ import annotations

from bench.servers.smtp_sink import SmtpSink
from tests.desk import (
    AGENT_FROM,
    ALICE,
    CUSTOMER,
    SUPPORT,
    TEAM,
    Desk,
    MakeDesk,
    agent_answer,
    only,
    open_ticket,
    participants,
)
from tests.mail import make_mail


def relayed_to(desk: Desk) -> list[str]:
    """The recipients of the one relayed reply the sender delivers now."""
    relays = [m for m in desk.deliver() if CUSTOMER in m.rcpt_tos]
    assert len(relays) == 1
    return sorted(relays[0].rcpt_tos)


def test_5000_cc_addresses_make_at_most_20_participants_and_one_event(desk: Desk) -> None:
    crowd = ", ".join(f"user{i}@crowd.example" for i in range(5000))
    number, note = open_ticket(desk, cc=crowd)
    people = participants(desk, number)
    assert len(people) == 20 and people[0] == CUSTOMER
    limits = [e for e in desk.events(number) if e.kind == "participants-limit"]
    assert len(limits) == 1
    assert "4981 address(es)" in (limits[0].detail or "")

    # the customer writes again with the same crowd: nobody new, and no second event
    desk.customer(subject="Re: Printer on fire", cc=crowd, in_reply_to=note.message["In-Reply-To"])
    assert len(participants(desk, number)) == 20
    assert len([e for e in desk.events(number) if e.kind == "participants-limit"]) == 1

    agent_answer(desk, note, "Everyone: unplug it.")
    rcpts = relayed_to(desk)
    assert len(rcpts) == 20 and CUSTOMER in rcpts


def test_a_strangers_cc_never_becomes_a_participant(desk: Desk) -> None:
    number, note = open_ticket(desk, message_id="<known@customer.example>")
    stranger = make_mail(
        sender="Eve <eve@evil.test>",
        subject="Re: Printer on fire",
        in_reply_to="<known@customer.example>",
        cc="spy@evil.test",
        body="Please keep me posted.\n",
    )
    outcome = desk.accept(stranger, sender="eve@evil.test")
    assert outcome.ticket == number  # it threads, as any reply to a known Message-ID does
    assert "spy@evil.test" not in participants(desk, number)
    desk.deliver()
    agent_answer(desk, note, "Fixed.")
    assert relayed_to(desk) == [CUSTOMER]


def test_the_customers_cc_of_a_colleague_receives_the_next_relay(desk: Desk) -> None:
    number, note = open_ticket(desk, message_id="<first@customer.example>")
    desk.customer(
        subject="Re: Printer on fire",
        in_reply_to="<first@customer.example>",
        cc="Dave <dave@customer.example>",
        body="Adding Dave, he manages the printers.\n",
    )
    assert "dave@customer.example" in participants(desk, number)
    desk.deliver()
    agent_answer(desk, note, "Dave, please check the toner.")
    assert relayed_to(desk) == [CUSTOMER, "dave@customer.example"]

    # a participant may bring in someone too
    desk.accept(
        make_mail(
            sender="Dave <dave@customer.example>",
            subject="Re: Printer on fire",
            in_reply_to="<first@customer.example>",
            cc="erin@customer.example",
        ),
        sender="dave@customer.example",
    )
    assert "erin@customer.example" in participants(desk, number)


def test_an_agent_writing_to_the_customer_directly_adds_its_cc(desk: Desk) -> None:
    number, _ = open_ticket(desk, message_id="<direct@customer.example>")
    raw = make_mail(
        sender=AGENT_FROM,
        to=CUSTOMER,
        cc=f"frank@customer.example, {SUPPORT}, {TEAM}",
        subject="Re: Printer on fire",
        in_reply_to="<direct@customer.example>",
    )
    desk.accept(raw, sender=ALICE, rcpts=(SUPPORT,), auth_user=ALICE)
    people = participants(desk, number)
    assert "frank@customer.example" in people and SUPPORT not in people


def test_a_relay_is_bounded_by_max_recipients_too(make_desk: MakeDesk, sink: SmtpSink) -> None:
    desk = make_desk(sink)
    settings = desk.app.settings
    smtp = settings.smtp.model_copy(update={"max_recipients": 5})
    desk.app.outbound.configure(settings.model_copy(update={"smtp": smtp}))
    _, note = open_ticket(desk, cc=", ".join(f"p{i}@customer.example" for i in range(10)))
    agent_answer(desk, note, "Hello all.")
    notice = only([m for m in desk.deliver() if CUSTOMER in m.rcpt_tos], CUSTOMER)
    assert len(notice.rcpt_tos) == 5
