"""What nodes share: IMAP checkpoints, leases, and queue round-robin turns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import (
    bindparam,
    delete,
    or_,
    update,
)

from mailbridge.storage import dialect
from mailbridge.storage.models import (
    ImapFolder,
    Lease,
    QueueCursor,
    table_of,
)
from mailbridge.storage.repo.base import rowcount
from mailbridge.storage.uow import Session


def imap_checkpoint(session: Session, account: str, folder: str) -> ImapFolder | None:
    return session.get(ImapFolder, (account, folder))


def save_imap_checkpoint(
    session: Session, account: str, folder: str, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    row = session.get(ImapFolder, (account, folder))
    if row is None:
        session.add(
            ImapFolder(
                account=account,
                folder=folder,
                uidvalidity=uidvalidity,
                last_uid=last_uid,
                last_success_at=now,
            )
        )
    else:
        if row.uidvalidity == uidvalidity:
            last_uid = max(last_uid, row.last_uid)  # never move backwards
        row.uidvalidity, row.last_uid, row.last_success_at = uidvalidity, last_uid, now


def acquire_lease(
    session: Session,
    name: str,
    owner: str,
    now: datetime,
    ttl: timedelta,
    incarnation: str = "",
    reclaim: Callable[[str | None], bool] | None = None,
) -> bool:
    """Take or renew a lease; True when `owner` (in this `incarnation`) holds it until now + ttl.

    A lease held by another owner, or by another incarnation of this owner, is taken only once it
    has expired, or (same owner only) when `reclaim(its incarnation)` says that process is gone.
    """
    values = {"owner": owner, "incarnation": incarnation, "expires_at": now + ttl}
    dialect.insert_ignore(session, table_of(Lease), [{"name": name, **values, "heartbeat_at": now}])
    mine = (Lease.owner == owner) & (Lease.incarnation == incarnation)
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(mine, Lease.expires_at < now))
        .values(**values, heartbeat_at=now)
    )
    if rowcount(result) or reclaim is None:
        return bool(rowcount(result))
    row = session.get(Lease, name)
    if row is None or row.owner != owner or not reclaim(row.incarnation):
        return False
    # compare-and-set: of two restarted processes racing for it, only one wins
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner, Lease.incarnation == row.incarnation)
        .values(**values, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(rowcount(result))


def release_lease(session: Session, name: str, owner: str, incarnation: str = "") -> None:
    session.execute(
        delete(Lease).where(
            Lease.name == name, Lease.owner == owner, Lease.incarnation == incarnation
        )
    )


def lease_holder(session: Session, name: str) -> tuple[str, str | None, datetime] | None:
    """(owner, incarnation, expires_at) of a lease, or None when nobody holds it."""
    row = session.get(Lease, name)
    return (row.owner, row.incarnation, row.expires_at) if row else None


def take_turn(session: Session, queue: str) -> int:
    """Advance a queue's round-robin cursor and return the turn it was at (0 first).

    The UPDATE holds the row's lock until the creating transaction ends, so nodes creating
    tickets in one queue at once take turns one after another, and a rollback gives the turn back."""
    # Core on the session's connection: the ORM's statement handling costs more than the UPDATE
    connection = session.connection()
    position = connection.execute(_TAKE_TURN, {"q": queue}).scalar()
    if position is None:  # the queue's first ticket: make its row, then take the turn
        dialect.insert_ignore(session, table_of(QueueCursor), [{"queue": queue, "position": 0}])
        position = connection.execute(_TAKE_TURN, {"q": queue}).scalar_one()
    return int(position) - 1


# built once, on the Core table: it runs for every new ticket of a round-robin queue
_CURSORS = table_of(QueueCursor)


_TAKE_TURN = (
    update(_CURSORS)
    .where(_CURSORS.c.queue == bindparam("q"))
    .values(position=_CURSORS.c.position + 1)
    .returning(_CURSORS.c.position)
)
