"""The ticket lifecycle: SPEC section 1 as a transition table, and the one function that applies it.

PURE: no I/O, no clock. `apply(state, event, now)` returns the new state and the event records
to store; a missing table entry raises `IllegalTransition` and nothing changes. The README
diagram and the exhaustive tests are generated from `TRANSITIONS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from mailbridge.errors import IllegalTransition


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    ANSWERED = "answered"
    RESOLVED = "resolved"
    CLOSED = "closed"
    POSTPONED = "postponed"
    SPAM = "spam"
    DELETED = "deleted"


class Kind(StrEnum):
    """What happened to a ticket. The values are the `kind` of stored events."""

    CREATED = "created"
    CUSTOMER_MAIL = "customer-mail"
    # a customer mail whose first line is a close word (SPEC 8); stored as `close` when it closes
    CONFIRM = "confirm"
    AGENT_REPLY = "agent-reply"
    RESOLVE = "resolve"
    POSTPONE = "postpone"
    CLOSE = "close"
    WAKE = "wake"
    SPAM = "spam"
    DELETE = "delete"
    RESTORE = "restore"


class Note(StrEnum):
    """What happened to a ticket without changing its status: the `kind` of the other stored
    events (their from and to status are the same, or both empty)."""

    # classification rules whose hit decided (rules.py): mail recorded on a ticket, status unchanged
    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"
    LOOP = "loop"
    BLOCKED = "blocked"
    # an agent's From that nothing authenticates: the mail was taken as the customer's
    UNAUTHENTICATED_AGENT = "unauthenticated-agent"
    PARTICIPANTS_LIMIT = "participants-limit"
    # owner, queue, tags and priority (SPEC 7)
    ASSIGN = "assign"
    QUEUE = "queue"
    TAG = "tag"
    PRIORITY = "priority"
    SLA_BREACH = "sla-breach"
    # sweep rules (`then` in the config) that change no status
    REMIND = "remind"
    ESCALATE = "escalate"
    # outbound mail the outbox could not deliver, and an operator's retry of it
    DELIVERY_FAILED = "delivery-failed"
    DELIVERY_RETRY = "delivery-retry"


LIVE = frozenset(
    {Status.NEW, Status.OPEN, Status.ANSWERED, Status.RESOLVED, Status.CLOSED, Status.POSTPONED}
)
PURGEABLE = frozenset({Status.CLOSED, Status.SPAM, Status.DELETED})

# Targets that are not a fixed status.
NEW_TICKET = "new-ticket"  # the mail opens a new ticket linked to this one (follow_up_of)
BEFORE = "before"  # back to the status saved when the ticket left normal life (restore)
WOKEN = "woken"  # open, or new if it was new when postponed

S = Status
_ACTIVE = (S.NEW, S.OPEN, S.ANSWERED, S.POSTPONED)

TRANSITIONS: dict[tuple[Status, Kind], str] = {
    # customer mail (threaded)
    (S.NEW, Kind.CUSTOMER_MAIL): S.NEW,
    (S.OPEN, Kind.CUSTOMER_MAIL): S.OPEN,
    (S.ANSWERED, Kind.CUSTOMER_MAIL): S.OPEN,
    (S.RESOLVED, Kind.CUSTOMER_MAIL): S.OPEN,
    (S.CLOSED, Kind.CUSTOMER_MAIL): NEW_TICKET,
    (S.POSTPONED, Kind.CUSTOMER_MAIL): S.OPEN,
    (S.SPAM, Kind.CUSTOMER_MAIL): S.SPAM,
    (S.DELETED, Kind.CUSTOMER_MAIL): NEW_TICKET,
    # customer confirms (close word): resolved -> closed, elsewhere as customer mail (below)
    (S.RESOLVED, Kind.CONFIRM): S.CLOSED,
    # agent reply
    **{(s, Kind.AGENT_REPLY): S.ANSWERED for s in (*_ACTIVE, S.RESOLVED, S.CLOSED)},
    # agent #resolve
    **{(s, Kind.RESOLVE): S.RESOLVED for s in _ACTIVE},
    # postpone until T
    **{(s, Kind.POSTPONE): S.POSTPONED for s in (*_ACTIVE, S.RESOLVED)},
    # #close / rule / CLI
    **{(s, Kind.CLOSE): S.CLOSED for s in (*_ACTIVE, S.RESOLVED)},
    # postponement due
    (S.POSTPONED, Kind.WAKE): WOKEN,
    # mark spam / delete from any live status; restore returns to the status before
    **{(s, Kind.SPAM): S.SPAM for s in LIVE},
    **{(s, Kind.DELETE): S.DELETED for s in LIVE},
    (S.SPAM, Kind.RESTORE): BEFORE,
    (S.DELETED, Kind.RESTORE): BEFORE,
}

# a close word is only a confirmation on a resolved ticket; anywhere else it is an ordinary reply
for (_status, _kind), _target in list(TRANSITIONS.items()):
    if _kind is Kind.CUSTOMER_MAIL and (_status, Kind.CONFIRM) not in TRANSITIONS:
        TRANSITIONS[(_status, Kind.CONFIRM)] = _target

# Lists derived from the table, for the config and the CLI (never copies of it).
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
# the statuses a ticket is in normal life and not yet closed: what reminders act on
_UNFINISHED = tuple(s.value for s in Status if s in LIVE and s is not S.CLOSED)


def _from(kind: Kind) -> tuple[str, ...]:
    return tuple(s.value for s in Status if (s, kind) in TRANSITIONS)


# for each `then` of a sweep rule, the statuses its `when` may name; the table refuses the rest
RULE_FROM: dict[str, tuple[str, ...]] = {
    S.RESOLVED.value: _from(Kind.RESOLVE),
    S.CLOSED.value: _from(Kind.CLOSE),
    "purge": tuple(s.value for s in Status if s in PURGEABLE),
    # reminders and escalations change no status: any ticket still in normal life
    Note.REMIND.value: _UNFINISHED,
    Note.ESCALATE.value: _UNFINISHED,
}

CONFIRMED = "confirmed by customer"  # the detail of a close by the customer


def confirms(body: str, close_words: Iterable[str]) -> bool:
    """Whether a reply's first non-empty line is a close word (case and trailing punctuation aside).

    The whole line must be the word: "Solved!" confirms, "Solved, but one more thing" does not,
    because a customer who adds anything may still be asking for something.
    """
    first = next((line for line in body.splitlines() if line.strip()), "")
    said = first.strip().rstrip(_TRAILING).strip().casefold()
    return bool(said) and said in {w.strip().casefold() for w in close_words}


_TRAILING = ".,;:!?…) \t"

_WHY = {
    Kind.AGENT_REPLY: "agents cannot reply on a ticket that is {status}; restore it first",
    Kind.RESOLVE: "ticket is already {status}",
    Kind.POSTPONE: "cannot postpone a ticket that is {status}",
    Kind.CLOSE: "ticket is already {status}",
    Kind.WAKE: "ticket is {status}, not postponed",
    Kind.SPAM: "ticket is already {status}",
    Kind.DELETE: "ticket is already {status}",
    Kind.RESTORE: "only spam or deleted tickets can be restored; this one is {status}",
}


@dataclass(frozen=True, slots=True)
class TicketState:
    status: Status
    # the status a ticket had before it was postponed, marked spam or deleted
    status_before: Status | None = None
    postponed_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    actor: str
    until: datetime | None = None  # for POSTPONE
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One event row to store."""

    at: datetime
    kind: str
    actor: str
    from_status: str | None
    to_status: str | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    state: TicketState
    records: tuple[Record, ...]
    new_ticket: bool = False  # the mail belongs on a new ticket linked to this one

    @property
    def changed(self) -> bool:
        return bool(self.records)


def create(actor: str, now: datetime, detail: str | None = None) -> Transition:
    """A brand-new ticket: status `new` and its `created` event."""
    state = TicketState(Status.NEW)
    return Transition(state, (Record(now, Kind.CREATED, actor, None, Status.NEW, detail),))


def apply(state: TicketState, event: Event, now: datetime) -> Transition:
    """Apply one event; raise IllegalTransition where the table says `–`."""
    target = TRANSITIONS.get((state.status, event.kind))
    if target is None:
        why = _WHY.get(event.kind, "cannot {kind} a ticket that is {status}")
        raise IllegalTransition(
            state.status, event.kind, why.format(status=state.status, kind=event.kind)
        )
    if target == NEW_TICKET:
        return Transition(state, (), new_ticket=True)
    if event.kind is Kind.CONFIRM:
        # stored as what it amounts to, so everything that counts closes or replies sees it
        closes = state.status is S.RESOLVED
        kind = Kind.CLOSE if closes else Kind.CUSTOMER_MAIL
        event = Event(kind, event.actor, detail=CONFIRMED if closes else event.detail)

    if event.kind is Kind.POSTPONE:
        if event.until is None or event.until <= now:
            raise IllegalTransition(
                state.status, event.kind, "the postponement time must be in the future"
            )
        # a second postponement keeps the status the ticket had before the first one
        before = state.status_before if state.status is S.POSTPONED else state.status
        new = TicketState(S.POSTPONED, before, event.until)
    elif target == WOKEN:
        new = TicketState(S.NEW if state.status_before is S.NEW else S.OPEN)
    elif target == BEFORE:
        before = state.status_before or S.OPEN
        # a restored postponement keeps its due time, so it still wakes up
        until = state.postponed_until if before is S.POSTPONED else None
        new = TicketState(before, None, until)
    elif target in (S.SPAM, S.DELETED):
        new = TicketState(Status(target), state.status, state.postponed_until)
    else:
        # any other change ends a postponement (a customer reply cancels it)
        new = TicketState(Status(target))

    if new == state:
        return Transition(state, ())
    detail = event.detail
    if event.kind is Kind.POSTPONE and event.until is not None:
        detail = detail or f"until {event.until.isoformat()}"
    record = Record(now, event.kind, event.actor, state.status, new.status, detail)
    return Transition(new, (record,))


_ROWS = (
    (Kind.CUSTOMER_MAIL, "customer mail (threaded)"),
    (Kind.AGENT_REPLY, "agent reply"),
    (Kind.RESOLVE, "agent `#resolve`"),
    (Kind.POSTPONE, "postpone until T"),
    (Kind.CLOSE, "`#close` / rule / CLI"),
    (Kind.WAKE, "postponement due"),
    (Kind.CONFIRM, "customer confirms (close word)"),
    (Kind.SPAM, "mark spam"),
    (Kind.DELETE, "delete"),
    (Kind.RESTORE, "restore"),
)
_SHOWN = {
    NEW_TICKET: "NEW ticket, linked",
    BEFORE: "status before",
    WOKEN: "open (new if it was new)",
}


def markdown_table() -> str:
    """The transition table as Markdown, for the README (a test keeps the two identical)."""
    statuses = list(Status)
    lines = [
        "| event \\ status | " + " | ".join(s.value for s in statuses) + " |",
        "|---" * (len(statuses) + 1) + "|",
    ]
    for kind, label in _ROWS:
        cells = [_SHOWN.get(t, t) if (t := TRANSITIONS.get((s, kind))) else "–" for s in statuses]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
