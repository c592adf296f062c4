"""Departments and owners through the core (SPEC 7): routing of new tickets, automatic owners,
mail from the queue's address, notifications to the owner, agent commands; with a real aiosmtpd
sink as smarthost, on SQLite (and two nodes on PostgreSQL for the round-robin cursor).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.servers.smtp_sink import SmtpSink
from mailbridge.envelope import Envelope
from mailbridge.storage import repo
from tests.desk import LIVE, TEAM, Desk, MakeDesk, only
from tests.mail import make_mail
from tests.nodes import at_once

# bob and erik are agents by the test config's agent domain
ALICE, BOB, ERIK = "alice@example.com", "bob@agents.example.com", "erik@agents.example.com"
BILLING = "billing@example.com"
BILLING_TEAM = "billing-team@example.com"
CUSTOMER = "carol@customer.example"

QUEUES = f"""
[[queues]]
name = "support"
addresses = ["support@example.com"]
assign_on_reply = true

[[queues]]
name = "billing"
addresses = ["{BILLING}", "invoices@example.com"]
from_name = "Billing"
notify = ["{BILLING_TEAM}"]
members = ["{ALICE}", "{BOB}"]
assign = "round_robin"

[[queues]]
name = "sales"
addresses = ["sales@example.com"]
members = ["{ALICE}", "{BOB}"]
assign = "sticky"

[[filters]]
name = "vip"
match = {{ from = "@bigcustomer.example" }}
set = {{ tags = ["vip"], priority = "high" }}

[[filters]]
name = "rspamd"
match = {{ header = "X-Spam", regex = "(?i)^yes" }}
set = {{ status = "spam" }}
"""


@pytest.fixture
def desk(make_desk: MakeDesk, sink: SmtpSink) -> Desk:
    return make_desk(sink, outbound=sink.outbound_toml() + QUEUES)


def write(
    desk: Desk, rcpts: tuple[str, ...], sender: str = f"Carol <{CUSTOMER}>", **mail: Any
) -> int:
    raw = make_mail(sender=sender, to=", ".join(rcpts), **mail)
    outcome = desk.accept(raw, sender=sender.split("<")[-1].rstrip(">"), rcpts=rcpts)
    assert outcome.outcome == "created", outcome
    assert outcome.ticket is not None
    return outcome.ticket


def created_detail(desk: Desk, number: int) -> str:
    [created] = [e for e in desk.events(number) if e.kind == "created"]
    return str(created.detail)


def test_mail_to_two_queue_addresses_makes_one_ticket_in_the_first(desk: Desk) -> None:
    number = write(desk, (BILLING, "support@example.com"))
    ticket = desk.ticket(number)
    assert ticket.queue == "billing" and ticket.owner == ALICE
    detail = created_detail(desk, number)
    assert "queue billing: envelope recipient billing@example.com" in detail
    assert "assign round_robin -> alice@example.com" in detail
    [assigned] = [e for e in desk.events(number) if e.kind == "assign"]
    assert (assigned.actor, assigned.detail) == (
        "rule:round_robin",
        "round_robin -> alice@example.com",
    )


def test_ack_and_notification_come_from_the_queue_and_notify_the_owner(desk: Desk) -> None:
    number = write(desk, (BILLING,))
    received = desk.deliver()
    ack = only(received, CUSTOMER)
    token = desk.ticket(number).token
    assert ack.message["From"].addresses[0].addr_spec == BILLING
    assert ack.message["From"].addresses[0].display_name == "Billing"
    assert ack.message["Reply-To"].addresses[0].addr_spec == f"billing+{token}@example.com"
    # owned: the owner hears of it, not the queue's list nor the general one
    note = only(received, ALICE)
    assert note.message["Reply-To"].addresses[0].addr_spec == f"billing+{token}@example.com"
    assert not [r for r in received if BILLING_TEAM in r.rcpt_tos or TEAM in r.rcpt_tos]


def test_support_queue_mail_keeps_the_support_address(desk: Desk) -> None:
    # the defect: every Reply-To was built on the alphabetically first address (billing@)
    number = write(desk, ("support@example.com",))
    received = desk.deliver()
    token = desk.ticket(number).token
    ack = only(received, CUSTOMER)
    assert ack.message["Reply-To"].addresses[0].addr_spec == f"support+{token}@example.com"
    only(received, TEAM)  # unowned: the queue's notify, here the default [agents] notify


def test_round_robin_alternates_and_a_threaded_reply_keeps_its_queue(desk: Desk) -> None:
    first = write(desk, (BILLING,))
    second = write(desk, ("invoices@example.com",))
    third = write(desk, (BILLING,))
    assert [desk.ticket(n).owner for n in (first, second, third)] == [ALICE, BOB, ALICE]
    desk.deliver()
    ack = desk.messages(first)[-1]
    token = desk.ticket(first).token
    raw = make_mail(
        sender=f"Carol <{CUSTOMER}>",
        to=f"support+{token}@example.com",
        subject="Re: more",
        in_reply_to=f"<{ack.message_id}>",
    )
    outcome = desk.accept(raw, rcpts=(f"billing+{token}@example.com",))
    assert (outcome.outcome, outcome.ticket) == ("appended", first)
    assert desk.ticket(first).queue == "billing"
    note = only(desk.deliver(), ALICE)  # the customer's reply goes to the owner
    assert "Customer reply" in str(note.message.get_body(("plain",)).get_content())


def test_filters_tag_prioritise_and_mark_spam(desk: Desk) -> None:
    number = write(desk, ("support@example.com",), sender="Boss <ceo@bigcustomer.example>")
    ticket = desk.ticket(number)
    assert ticket.priority == "high"
    with desk.app.store.unit() as session:
        assert repo.tags_of(session, [number]) == {number: ["vip"]}
    assert "filter vip: tag vip, priority high" in created_detail(desk, number)
    desk.deliver()
    spam = write(desk, ("support@example.com",), headers={"X-Spam": "Yes"})
    assert desk.ticket(spam).status == "spam"
    assert desk.deliver() == []  # no acknowledgement or notification for spam


def test_spamassassin_flag_counts_without_a_blocked_list(desk: Desk) -> None:
    number = write(desk, ("support@example.com",), headers={"X-Spam-Flag": "YES"})
    assert desk.ticket(number).status == "spam"


def test_sticky_keeps_the_customers_owner_for_90_days(desk: Desk) -> None:
    first = write(desk, ("sales@example.com",))
    other = write(desk, ("sales@example.com",), sender="Dan <dan@other.example>")
    again = write(desk, ("sales@example.com",))
    owners = [desk.ticket(n).owner for n in (first, other, again)]
    assert owners == [ALICE, BOB, ALICE]
    desk.clock.advance(days=91)
    later = write(desk, ("sales@example.com",))
    assert desk.ticket(later).owner == ALICE  # round robin's turn: alice after bob
    assert "sticky (no recent owner), round_robin -> alice@example.com" in created_detail(
        desk, later
    )


def agent_mail(
    desk: Desk, number: int, body: str, *, auth: bool = True, sender: str = ALICE
) -> Any:
    token = desk.ticket(number).token
    queue = desk.ticket(number).queue
    base = "billing" if queue == "billing" else "support"
    rcpt = f"{base}+{token}@example.com"
    raw = make_mail(sender=f"Agent <{sender}>", to=rcpt, subject="Re: x", body=body)
    env: dict[str, Any] = {"auth_user": sender} if auth else {}
    return desk.app.ingestor.accept(raw, Envelope(sender, (rcpt,), **env), LIVE)


def test_agent_commands_change_queue_owner_tags_priority(desk: Desk) -> None:
    number = write(desk, ("support@example.com",))
    desk.deliver()
    agent_mail(desk, number, "#take\n#tag Refund late\n#priority urgent\n")
    ticket = desk.ticket(number)
    assert (ticket.owner, ticket.priority, ticket.status) == (ALICE, "urgent", "new")
    agent_mail(desk, number, "#untag late\n#queue billing\n#assign bob\n")
    ticket = desk.ticket(number)
    assert (ticket.queue, ticket.owner) == ("billing", BOB)
    with desk.app.store.unit() as session:
        assert repo.tags_of(session, [number]) == {number: ["refund"]}
    kinds = [(e.kind, e.actor, e.detail) for e in desk.events(number) if e.kind not in ("created",)]
    assert ("assign", ALICE, f"none -> {ALICE} by {ALICE}") in kinds
    assert ("queue", ALICE, f"support -> billing by {ALICE}") in kinds
    assert ("assign", ALICE, f"{ALICE} -> {BOB} by {ALICE}") in kinds
    assert ("priority", ALICE, f"normal -> urgent by {ALICE}") in kinds
    assert all(e.from_status == e.to_status for e in desk.events(number) if e.kind != "created")
    assert [r for r in desk.deliver() if CUSTOMER in r.rcpt_tos] == []  # commands relay nothing
    agent_mail(desk, number, "#unassign\n")
    assert desk.ticket(number).owner is None


def test_refused_commands_are_answered_and_change_nothing(desk: Desk) -> None:
    number = write(desk, (BILLING,))
    desk.deliver()
    before = desk.ticket(number)
    outcome = agent_mail(
        desk,
        number,
        "#assign erik@agents.example.com\n#queue nowhere\n#priority whenever\n#assign nobody\n",
        sender=BOB,
    )
    assert "refused" in outcome.reason
    after = desk.ticket(number)
    assert (after.owner, after.queue, after.priority) == (before.owner, "billing", "normal")
    notice = only(desk.deliver(), BOB)
    text = str(notice.message.get_body(("plain",)).get_content())
    assert f"{ERIK} is not a member of queue billing" in text
    assert "no queue 'nowhere'" in text and "no priority 'whenever'" in text
    assert "no agent 'nobody'" in text


def test_unauthenticated_commands_change_nothing(desk: Desk) -> None:
    number = write(desk, ("support@example.com",))
    desk.deliver()
    agent_mail(desk, number, "#take\n#priority urgent\n", auth=False)
    ticket = desk.ticket(number)
    assert (ticket.owner, ticket.priority) == (None, "normal")
    assert not [e for e in desk.events(number) if e.kind in ("assign", "priority")]


def test_first_agent_reply_takes_an_unowned_ticket_with_assign_on_reply(desk: Desk) -> None:
    number = write(desk, ("support@example.com",))
    desk.deliver()
    agent_mail(desk, number, "Hello Carol, we are on it.\n", sender=BOB)
    assert desk.ticket(number).owner == BOB
    agent_mail(desk, number, "A second answer.\n")
    assert desk.ticket(number).owner == BOB  # only the first reply takes it


def test_two_nodes_take_strict_round_robin_turns(
    make_desk: MakeDesk, sink: SmtpSink, pg_url: str
) -> None:
    nodes = [make_desk(sink, url=pg_url, outbound=sink.outbound_toml() + QUEUES) for _ in range(2)]
    per_node = 8

    def run(numbered: tuple[int, Desk]) -> None:
        n, node = numbered
        for i in range(per_node):
            raw = make_mail(sender=f"c{n}-{i}@customer.example", to=BILLING)
            outcome = node.accept(raw, sender=f"c{n}-{i}@customer.example", rcpts=(BILLING,))
            assert outcome.outcome == "created", outcome

    at_once(run, list(enumerate(nodes)))
    with nodes[0].app.store.unit() as session:
        owners = [t.owner for t, _ in repo.list_tickets(session, queue="billing")]
        assert repo.take_turn(session, "billing") == 2 * per_node  # no turn lost or taken twice
    assert owners == [ALICE, BOB] * per_node
