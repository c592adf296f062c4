"""What threading reads and writes: the Message-ID index, Thread-Index, tokens, and each
ticket's participants. The index and the participants go through `session.rows`, so that
inside a batch they see the rows it still holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select

from mailbridge.storage.models import Ticket
from mailbridge.storage.repo.base import key_of
from mailbridge.storage.uow import Session


def tickets_for_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Message-ID -> ticket number, for those we know."""
    if not message_ids:
        return {}
    keys = {key_of(m): m for m in message_ids}
    return {keys[k]: n for k, n in session.rows.thread_tickets(keys).items()}


def prefetch_threads(session: Session, message_ids: Iterable[str]) -> None:
    """For a batch: read at once which tickets these Message-IDs (its mail's In-Reply-To and
    References) lead to, and those tickets, instead of a lookup per mail."""
    session.rows.prefetch({key_of(m) for m in message_ids if m})


def add_thread_keys(session: Session, number: int, message_ids: Iterable[str]) -> None:
    """Index Message-IDs for a ticket; an ID already indexed keeps its first ticket."""
    session.rows.add_thread_keys(
        [
            {"key": key_of(m), "message_id": m[:2000], "ticket_number": number}
            for m in dict.fromkeys(message_ids)
            if m
        ]
    )


def ticket_for_thread_index(session: Session, thread_index: str) -> int | None:
    """The newest ticket of this Outlook conversation (one a batch holds is newer than any
    written)."""
    held = [t.number for t in session.rows.held_tickets() if t.thread_index == thread_index]
    if held:
        return max(held)
    return session.scalar(
        select(Ticket.number)
        .where(Ticket.thread_index == thread_index)
        .order_by(Ticket.number.desc())
        .limit(1)
    )


def ticket_by_token(session: Session, token: str) -> Ticket | None:
    for ticket in session.rows.held_tickets():
        if ticket.token == token:
            return ticket
    return session.scalar(select(Ticket).where(Ticket.token == token))


def is_participant(session: Session, number: int, address: str) -> bool:
    return session.rows.is_participant(number, address.lower())


def participants(session: Session, number: int) -> list[str]:
    return session.rows.participants(number)


def add_participants(session: Session, number: int, addresses: Iterable[tuple[str, str]]) -> None:
    session.rows.add_participants(
        [{"ticket_number": number, "address": a.lower(), "role": r} for a, r in addresses if a]
    )
