"""A bad command in an agent's reply is refused with a notice; the rest of the reply still goes
out and is recorded (issue 14, item 4). Against a real aiosmtpd sink as smarthost."""

from __future__ import annotations

import pytest

from mailbridge.storage import repo
from tests.desk import ALICE, CUSTOMER, Desk, agent_answer, only, open_ticket, text_of


@pytest.mark.parametrize(
    ("argument", "why"),
    [
        ("99999999d", "too far ahead"),
        ("9" * 5000 + "w", "too far ahead"),
        ("9999-12-31T23:59", "too far ahead"),
        ("2026-13-45", "cannot read the time"),
    ],
    ids=["days-overflow", "5000-digits", "year-9999", "no-such-date"],
)
def test_a_bad_postpone_is_refused_and_the_reply_still_relayed(
    desk: Desk, argument: str, why: str
) -> None:
    number, note = open_ticket(desk)
    outcome = agent_answer(desk, note, f"#postpone {argument}\n\nI will look into it this week.")
    assert outcome.outcome == "appended" and outcome.quarantine is None
    assert "refused: #postpone" in outcome.reason
    ticket = desk.ticket(number)
    assert (ticket.status, ticket.postponed_until) == ("answered", None)

    arrived = desk.deliver()
    assert text_of(only(arrived, CUSTOMER).message).strip() == "I will look into it this week."
    notice = text_of(only(arrived, ALICE).message)
    assert "#postpone" in notice and why in notice
    with desk.app.store.unit() as session:
        stored = [
            m.body_text for m in repo.ticket_messages(session, number) if m.author_kind == "agent"
        ]
    # the agent's mail as it came in, then the relayed copy
    assert len(stored) == 2 and all("I will look into it this week." in s for s in stored)
