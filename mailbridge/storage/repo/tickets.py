"""Ticket rows: create, find, lock, list, count, purge, and save a lifecycle transition onto one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, delete, func, select, update

from mailbridge.lifecycle import Status, TicketState, Transition
from mailbridge.storage import dialect
from mailbridge.storage.models import (
    Attachment,
    Event,
    Message,
    Outbox,
    Participant,
    ThreadKey,
    Ticket,
    TicketTag,
    Tombstone,
    table_of,
)
from mailbridge.storage.repo.base import count_up_to
from mailbridge.storage.repo.events import add_events
from mailbridge.storage.uow import Session


def get_ticket(session: Session, number: int, lock: bool = False) -> Ticket | None:
    """The ticket (locked for the change to come on PostgreSQL), or one the batch holds."""
    return session.rows.ticket(number, lock)


def add_ticket(session: Session, ticket: Ticket) -> Ticket:
    """Add a ticket; it comes back numbered, and its later changes are written with the unit of
    work (a batch writes it when it flushes, as it is by then)."""
    return session.rows.add_ticket(ticket)


def lock_ticket(session: Session, number: int) -> Ticket | None:
    """Claim a ticket whatever its status (SKIP LOCKED on PostgreSQL, as `lock_ticket_if`)."""
    return session.scalar(
        dialect.skip_locked(session, select(Ticket).where(Ticket.number == number))
    )


def lock_ticket_if(session: Session, number: int, status: str) -> Ticket | None:
    """Claim a ticket for a sweep: locked, and only if it still has the status the sweep expects.

    On PostgreSQL a row another node holds is skipped (SKIP LOCKED); SQLite has one writer anyway.
    """
    stmt = select(Ticket).where(Ticket.number == number, Ticket.status == status)
    return session.scalar(dialect.skip_locked(session, stmt))


_COUNT_NEW_TICKETS_FROM = count_up_to(
    select(Ticket.number).where(
        Ticket.customer == bindparam("customer"), Ticket.created_at >= bindparam("since")
    )
)


def count_new_tickets_from(session: Session, customer: str, since: datetime, at_most: int) -> int:
    """Tickets `customer` opened since `since`, counted up to `at_most` (the flood guard).

    Inside a batch the written ones are counted once per sender: a count since an earlier
    `since` is at least the count since this one, so while it stays below `at_most` it answers
    for the sender's later mail in the batch (a load test's or a bulk sender's mail would
    otherwise count all of the sender's hour, once per mail)."""
    held = sum(
        1 for t in session.rows.held_tickets() if t.customer == customer and t.created_at >= since
    )
    memo = session.rows.memo
    earlier = memo.get(("new tickets", customer))
    if earlier is not None and earlier[0] <= since and earlier[1] + held < at_most:
        return int(earlier[1]) + held
    params = {"customer": customer, "since": since, "at_most": at_most}
    written = session.scalar(_COUNT_NEW_TICKETS_FROM, params) or 0
    memo[("new tickets", customer)] = (since, written)
    return min(at_most, written + held)


def list_tickets(
    session: Session,
    status: str | None = None,
    *,
    queue: str | None = None,
    owner: str | None = None,
    unassigned: bool = False,
    tag: str | None = None,
    priority: str | None = None,
) -> list[tuple[Ticket, int]]:
    counts = (
        select(Message.ticket_number, func.count().label("n"))
        .group_by(Message.ticket_number)
        .subquery()
    )
    stmt = (
        select(Ticket, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.ticket_number == Ticket.number)
        .order_by(Ticket.number)
    )
    if status:
        stmt = stmt.where(Ticket.status == status)
    if queue:
        stmt = stmt.where(Ticket.queue == queue)
    if owner:
        stmt = stmt.where(Ticket.owner == owner.lower())
    if unassigned:
        stmt = stmt.where(Ticket.owner.is_(None))
    if priority:
        stmt = stmt.where(Ticket.priority == priority)
    if tag:
        tagged = select(TicketTag.ticket_number).where(TicketTag.tag == tag.lower())
        stmt = stmt.where(Ticket.number.in_(tagged))
    return [(t, n) for t, n in session.execute(stmt)]


def status_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Ticket.status, func.count()).group_by(Ticket.status)).all())


def all_tickets(session: Session) -> list[Ticket]:
    return list(session.scalars(select(Ticket).order_by(Ticket.number)))


def purge_ticket(session: Session, number: int, now: datetime) -> int:
    """Delete a ticket and everything on it, leaving tombstones; returns messages removed."""
    rows = session.execute(
        select(Message.dedup_key, Message.message_id).where(Message.ticket_number == number)
    ).all()
    dialect.insert_ignore(
        session,
        table_of(Tombstone),
        [
            {"dedup_key": k, "message_id": m, "ticket_number": number, "purged_at": now}
            for k, m in rows
        ],
    )
    session.execute(update(Ticket).where(Ticket.follow_up_of == number).values(follow_up_of=None))
    for model in (Event, ThreadKey, Participant):
        session.execute(delete(model).where(model.ticket_number == number))
    pks = select(Message.id).where(Message.ticket_number == number)
    session.execute(delete(Attachment).where(Attachment.message_pk.in_(pks)))
    session.execute(update(Outbox).where(Outbox.message_pk.in_(pks)).values(message_pk=None))
    session.execute(update(Outbox).where(Outbox.ticket_number == number).values(ticket_number=None))
    session.execute(delete(Message).where(Message.ticket_number == number))
    session.execute(delete(Ticket).where(Ticket.number == number))
    return len(rows)


def ticket_state(ticket: Ticket) -> TicketState:
    """The lifecycle state of a ticket row."""
    before = Status(ticket.status_before) if ticket.status_before else None
    return TicketState(Status(ticket.status), before, ticket.postponed_until)


def apply_state(ticket: Ticket, state: TicketState, now: datetime) -> None:
    """Write a lifecycle state onto the ticket row: the only place ticket status is assigned."""
    ticket.status = state.status.value
    ticket.status_before = state.status_before.value if state.status_before else None
    ticket.postponed_until = state.postponed_until
    ticket.updated_at = now
    ticket.last_activity_at = now
    ticket.sla_stale = True  # the SLA sweep recomputes its due times from the new history


def save_transition(
    session: Session,
    ticket: Ticket,
    transition: Transition,
    now: datetime,
    message_pk: int | None = None,
) -> bool:
    """Save what `lifecycle.apply` decided: the new state onto the row, then its events.
    Returns whether anything changed (a transition without records changes nothing)."""
    if not transition.changed:
        return False
    apply_state(ticket, transition.state, now)
    add_events(session, ticket.number, transition.records, message_pk)
    return True
