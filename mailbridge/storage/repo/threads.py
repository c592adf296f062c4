"""What threading reads and writes: the Message-ID index, Thread-Index, tokens, and each
ticket's participants."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    insert,
    select,
)
from sqlalchemy.orm import Session

from mailbridge.storage import dialect
from mailbridge.storage.models import (
    Event,
    Participant,
    ThreadKey,
    Ticket,
)
from mailbridge.storage.repo.base import key_of, table_of


def tickets_for_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Message-ID -> ticket number, for those we know."""
    if not message_ids:
        return {}
    keys = {key_of(m): m for m in message_ids}
    rows = session.execute(
        select(ThreadKey.key, ThreadKey.ticket_number).where(ThreadKey.key.in_(list(keys)))
    )
    found = {keys[k]: n for k, n in rows}
    if (pending := _deferred(session)) is not None:
        for key, mid in keys.items():
            if mid not in found and key in pending.thread_keys:
                found[mid] = int(pending.thread_keys[key]["ticket_number"])
    return found


@dataclass
class _Deferred:
    """Rows nobody needs an id of (events, participants, Message-ID index), written once per batch
    with executemany instead of one statement per message; reads below see them meanwhile."""

    events: list[dict[str, Any]] = field(default_factory=list)
    participants: dict[tuple[int, str], dict[str, object]] = field(default_factory=dict)
    thread_keys: dict[str, dict[str, Any]] = field(default_factory=dict)


def defer_writes(session: Session) -> None:
    session.info["deferred"] = _Deferred()


def _deferred(session: Session) -> _Deferred | None:
    return session.info.get("deferred")


def flush_deferred(session: Session) -> None:
    """Write what `defer_writes` held back; the unit of work must call this before it commits."""
    pending = session.info.pop("deferred", None)
    if pending is None:
        return
    dialect.insert_ignore(session, table_of(ThreadKey), list(pending.thread_keys.values()))
    dialect.insert_ignore(session, table_of(Participant), list(pending.participants.values()))
    if pending.events:
        session.execute(insert(Event), pending.events)


def ticket_for_thread_index(session: Session, thread_index: str) -> int | None:
    return session.scalar(
        select(Ticket.number)
        .where(Ticket.thread_index == thread_index)
        .order_by(Ticket.number.desc())
        .limit(1)
    )


def ticket_by_token(session: Session, token: str) -> Ticket | None:
    return session.scalar(select(Ticket).where(Ticket.token == token))


def is_participant(session: Session, number: int, address: str) -> bool:
    pending = _deferred(session)
    if pending is not None and (number, address.lower()) in pending.participants:
        return True
    return (
        session.scalar(
            select(Participant.id).where(
                Participant.ticket_number == number, Participant.address == address.lower()
            )
        )
        is not None
    )


def participants(session: Session, number: int) -> list[str]:
    found = list(
        session.scalars(
            select(Participant.address)
            .where(Participant.ticket_number == number)
            .order_by(Participant.id)
        )
    )
    if (pending := _deferred(session)) is not None:
        found += [a for (n, a) in pending.participants if n == number and a not in found]
    return found


def add_participants(session: Session, number: int, addresses: Iterable[tuple[str, str]]) -> None:
    rows = [{"ticket_number": number, "address": a.lower(), "role": r} for a, r in addresses if a]
    if (pending := _deferred(session)) is not None:
        for row in rows:
            pending.participants.setdefault((number, str(row["address"])), row)
        return
    dialect.insert_ignore(session, table_of(Participant), rows)


def add_thread_keys(session: Session, number: int, message_ids: Iterable[str]) -> None:
    """Index Message-IDs for a ticket; an ID already indexed keeps its first ticket."""
    rows = [
        {"key": key_of(m), "message_id": m[:2000], "ticket_number": number}
        for m in dict.fromkeys(message_ids)
        if m
    ]
    if (pending := _deferred(session)) is not None:
        for row in rows:
            pending.thread_keys.setdefault(str(row["key"]), row)
        return
    dialect.insert_ignore(session, table_of(ThreadKey), rows)
