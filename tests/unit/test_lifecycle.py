"""Every cell of the SPEC lifecycle table: allowed transitions land where the table says, `–` refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailbridge import lifecycle as L
from mailbridge.errors import IllegalTransition
from mailbridge.lifecycle import Kind, Status, TicketState

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=2)
S = Status

# The SPEC table, written out cell by cell (independently of lifecycle.TRANSITIONS).
# None means "–": refused, nothing changes.
SPEC: dict[Kind, dict[Status, str | None]] = {
    Kind.CUSTOMER_MAIL: {
        S.NEW: "new",
        S.OPEN: "open",
        S.ANSWERED: "open",
        S.RESOLVED: "open",
        S.CLOSED: "NEW",
        S.POSTPONED: "open",
        S.SPAM: "spam",
        S.DELETED: "NEW",
    },
    Kind.AGENT_REPLY: {
        S.NEW: "answered",
        S.OPEN: "answered",
        S.ANSWERED: "answered",
        S.RESOLVED: "answered",
        S.CLOSED: "answered",
        S.POSTPONED: "answered",
        S.SPAM: None,
        S.DELETED: None,
    },
    Kind.RESOLVE: {
        S.NEW: "resolved",
        S.OPEN: "resolved",
        S.ANSWERED: "resolved",
        S.RESOLVED: None,
        S.CLOSED: None,
        S.POSTPONED: "resolved",
        S.SPAM: None,
        S.DELETED: None,
    },
    Kind.POSTPONE: {
        S.NEW: "postponed",
        S.OPEN: "postponed",
        S.ANSWERED: "postponed",
        S.RESOLVED: "postponed",
        S.CLOSED: None,
        S.POSTPONED: "postponed",
        S.SPAM: None,
        S.DELETED: None,
    },
    Kind.CLOSE: {
        S.NEW: "closed",
        S.OPEN: "closed",
        S.ANSWERED: "closed",
        S.RESOLVED: "closed",
        S.CLOSED: None,
        S.POSTPONED: "closed",
        S.SPAM: None,
        S.DELETED: None,
    },
    Kind.WAKE: {
        S.NEW: None,
        S.OPEN: None,
        S.ANSWERED: None,
        S.RESOLVED: None,
        S.CLOSED: None,
        S.POSTPONED: "open",
        S.SPAM: None,
        S.DELETED: None,
    },
    # SPEC 8: resolved -> closed; every other status as customer mail (threaded)
    Kind.CONFIRM: {
        S.NEW: "new",
        S.OPEN: "open",
        S.ANSWERED: "open",
        S.RESOLVED: "closed",
        S.CLOSED: "NEW",
        S.POSTPONED: "open",
        S.SPAM: "spam",
        S.DELETED: "NEW",
    },
    Kind.SPAM: {**{s: "spam" for s in L.LIVE}, S.SPAM: None, S.DELETED: None},
    Kind.DELETE: {**{s: "deleted" for s in L.LIVE}, S.SPAM: None, S.DELETED: None},
    Kind.RESTORE: {**{s: None for s in L.LIVE}, S.SPAM: "open", S.DELETED: "open"},
}
CELLS = [(kind, status, want) for kind, row in SPEC.items() for status, want in row.items()]


def state_for(status: Status) -> TicketState:
    if status is S.POSTPONED:
        return TicketState(status, S.OPEN, LATER)
    if status in (S.SPAM, S.DELETED):
        return TicketState(status, S.OPEN)
    return TicketState(status)


@pytest.mark.parametrize(("kind", "status", "want"), CELLS, ids=[f"{k}-{s}" for k, s, _ in CELLS])
def test_table_cell(kind: Kind, status: Status, want: str | None) -> None:
    until = NOW + timedelta(days=3) if kind is Kind.POSTPONE else None
    event = L.Event(kind, "someone", until)
    if want is None:
        with pytest.raises(IllegalTransition):
            L.apply(state_for(status), event, NOW)
        return
    result = L.apply(state_for(status), event, NOW)
    if want == "NEW":
        assert result.new_ticket and result.state == state_for(status) and not result.records
        return
    assert result.state.status == want
    if want != status:
        (record,) = result.records
        assert (record.from_status, record.to_status, record.at, record.actor) == (
            status,
            want,
            NOW,
            "someone",
        )


def test_every_spec_cell_is_in_the_table_and_nothing_more() -> None:
    allowed = {(s, k) for k, s, want in CELLS if want is not None}
    assert allowed == set(L.TRANSITIONS)


def test_confirmation_is_stored_as_a_close_by_the_customer() -> None:
    result = L.apply(TicketState(S.RESOLVED), L.Event(Kind.CONFIRM, "c@example.com"), NOW)
    (record,) = result.records
    assert (record.kind, record.actor, record.detail) == (
        Kind.CLOSE,
        "c@example.com",
        "confirmed by customer",
    )
    # on any other status a close word is an ordinary customer reply
    result = L.apply(TicketState(S.ANSWERED), L.Event(Kind.CONFIRM, "c@example.com"), NOW)
    (record,) = result.records
    assert (record.kind, record.to_status, record.detail) == (Kind.CUSTOMER_MAIL, S.OPEN, None)


def test_wake_returns_to_new_when_it_was_new() -> None:
    postponed = L.apply(TicketState(S.NEW), L.Event(Kind.POSTPONE, "a", LATER), NOW).state
    assert postponed == TicketState(S.POSTPONED, S.NEW, LATER)
    assert L.apply(postponed, L.Event(Kind.WAKE, "rule:wake"), LATER).state.status is S.NEW


def test_customer_reply_cancels_postponement() -> None:
    postponed = TicketState(S.POSTPONED, S.ANSWERED, LATER)
    result = L.apply(postponed, L.Event(Kind.CUSTOMER_MAIL, "c"), NOW)
    assert result.state == TicketState(S.OPEN)


def test_postpone_in_the_past_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="future"):
        L.apply(TicketState(S.OPEN), L.Event(Kind.POSTPONE, "a", NOW - timedelta(seconds=1)), NOW)


def test_restore_returns_to_the_status_before() -> None:
    spam = L.apply(TicketState(S.ANSWERED), L.Event(Kind.SPAM, "a"), NOW).state
    assert L.apply(spam, L.Event(Kind.RESTORE, "a"), NOW).state.status is S.ANSWERED
    deleted = L.apply(TicketState(S.POSTPONED, S.OPEN, LATER), L.Event(Kind.DELETE, "a"), NOW).state
    restored = L.apply(deleted, L.Event(Kind.RESTORE, "a"), NOW).state
    assert restored.status is S.POSTPONED and restored.postponed_until == LATER


def test_refusal_says_why() -> None:
    with pytest.raises(IllegalTransition, match="already resolved"):
        L.apply(TicketState(S.RESOLVED), L.Event(Kind.RESOLVE, "a"), NOW)
