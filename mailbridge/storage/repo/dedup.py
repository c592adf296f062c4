"""Has this mail been stored, purged or quarantined before? (SPEC dedup)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    literal,
    select,
    union_all,
)

from mailbridge.storage.models import (
    Message,
    Quarantine,
    Tombstone,
)
from mailbridge.storage.uow import Session


def seen_dedup_key(session: Session, dedup_key: str) -> int | None:
    """The ticket number a mail with this key is on (0 when purged), or None when it is new."""
    number = session.scalar(select(Message.ticket_number).where(Message.dedup_key == dedup_key))
    if number is not None:
        return number
    if session.scalar(select(Tombstone.ticket_number).where(Tombstone.dedup_key == dedup_key)):
        return 0
    return None


def known_dedup_keys(
    session: Session, keys: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """For a batch: key -> ticket number (0 when purged), and key -> held quarantine entry."""
    if not keys:
        return {}, {}
    unique = list(set(keys))
    # one round trip for the three places a key can be: this runs once per group commit
    rows: Sequence[Any] = session.execute(  # the union's columns are untyped
        union_all(
            select(Message.dedup_key, Message.ticket_number, literal("m")).where(
                Message.dedup_key.in_(unique)
            ),
            select(Tombstone.dedup_key, literal(0), literal("t")).where(
                Tombstone.dedup_key.in_(unique)
            ),
            select(Quarantine.dedup_key, Quarantine.id, literal("q")).where(
                Quarantine.dedup_key.in_(unique), Quarantine.state == "held"
            ),
        )
    ).all()
    known: dict[str, int] = {}
    held: dict[str, int] = {}
    for key, number, where in rows:
        if where == "q":
            held[key] = number
        elif where == "m" or key not in known:
            known[key] = number
    return known, held
