"""Queues, owners and tags (SPEC 7): workloads, sticky owners, tag rows, queue summaries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select

from mailbridge.storage.models import Ticket, TicketTag
from mailbridge.storage.uow import Session

_OPEN = ("new", "open", "answered", "postponed")


def open_counts(session: Session, members: Sequence[str]) -> dict[str, int]:
    """Tickets each member owns in new/open/answered/postponed, over all queues (their workload)."""
    stmt = (
        select(Ticket.owner, func.count())
        .where(Ticket.owner.in_(list(members)), Ticket.status.in_(_OPEN))
        .group_by(Ticket.owner)
    )
    counts = {str(owner): int(n) for owner, n in session.execute(stmt)}
    for ticket in session.rows.held_tickets():
        owner = ticket.owner
        if owner is not None and owner in members and ticket.status in _OPEN:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def last_owner(session: Session, customer: str, queue: str, since: datetime) -> str | None:
    """The owner of this customer's most recent owned ticket in the queue created since `since`."""
    for ticket in reversed(list(session.rows.held_tickets())):
        if (
            ticket.customer == customer
            and ticket.queue == queue
            and ticket.created_at >= since
            and ticket.owner is not None
        ):
            return ticket.owner
    return session.scalar(
        select(Ticket.owner)
        .where(
            Ticket.customer == customer,
            Ticket.queue == queue,
            Ticket.created_at >= since,
            Ticket.owner.is_not(None),
        )
        .order_by(Ticket.created_at.desc(), Ticket.number.desc())
        .limit(1)
    )


def add_tags(session: Session, number: int, tags: Iterable[str]) -> None:
    session.rows.add_tags([{"ticket_number": number, "tag": t} for t in tags])


def remove_tags(session: Session, number: int, tags: Iterable[str]) -> None:
    session.rows.flush()  # a tag a batch holds is removed like a written one
    session.execute(
        delete(TicketTag).where(TicketTag.ticket_number == number, TicketTag.tag.in_(list(tags)))
    )


def tags_of(session: Session, numbers: Sequence[int]) -> dict[int, list[str]]:
    """Each ticket's tags, sorted; tickets without tags are absent."""
    session.rows.flush()
    found: dict[int, list[str]] = {}
    for start in range(0, len(numbers), 500):
        chunk = list(numbers[start : start + 500])
        rows = session.execute(
            select(TicketTag.ticket_number, TicketTag.tag)
            .where(TicketTag.ticket_number.in_(chunk))
            .order_by(TicketTag.ticket_number, TicketTag.tag)
        )
        for n, tag in rows:
            found.setdefault(int(n), []).append(str(tag))
    return found


def all_tags(session: Session) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for n, tag in session.execute(
        select(TicketTag.ticket_number, TicketTag.tag).order_by(TicketTag.tag)
    ):
        found.setdefault(int(n), []).append(str(tag))
    return found


def queue_summary(session: Session) -> list[tuple[str, str, bool, int, datetime | None]]:
    """(queue, status, unowned, count, oldest last activity) groups, for `mailbridge queues`."""
    stmt = select(
        Ticket.queue,
        Ticket.status,
        Ticket.owner.is_(None),
        func.count(),
        func.min(Ticket.last_activity_at),
    ).group_by(Ticket.queue, Ticket.status, Ticket.owner.is_(None))
    return [
        (str(q), str(s), bool(u), int(n), oldest) for q, s, u, n, oldest in session.execute(stmt)
    ]


def unassigned_counts(session: Session) -> dict[str, int]:
    stmt = (
        select(Ticket.queue, func.count())
        .where(Ticket.owner.is_(None), Ticket.status.in_(_OPEN))
        .group_by(Ticket.queue)
    )
    return {str(q): int(n) for q, n in session.execute(stmt)}
