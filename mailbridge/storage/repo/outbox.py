"""The outbox: mail and webhook posts waiting to be sent, claimed, renewed and recorded.

Mail is decided at ingest and written by the sender: see `mailbridge.outbound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import undefer

from mailbridge.storage import dialect
from mailbridge.storage.models import Attachment, Message, Outbox, table_of
from mailbridge.storage.repo.events import queue_message_webhooks
from mailbridge.storage.repo.limits import add_counts
from mailbridge.storage.repo.threads import add_thread_keys
from mailbridge.storage.uow import Session

_OUTBOX = table_of(Outbox)
_MESSAGES = table_of(Message)
_ATTACHMENTS = table_of(Attachment)


def queue_outbound(
    session: Session,
    number: int,
    messages: Sequence[dict[str, Any]],
    outbox: Sequence[dict[str, Any]],
) -> list[int]:
    """Outbound mail for a ticket in three statements, whatever their number: the copies stored
    on the ticket, their Message-IDs indexed for threading, and their outbox rows (each pointing
    at its copy), counted for the hourly limits. Returns the copies' ids, in order."""
    if not messages:
        return []
    ids = session.rows.add_messages(list(messages))
    add_thread_keys(session, number, [m["message_id"] for m in messages])
    session.rows.add_outbox([row | {"message_pk": pk} for row, pk in zip(outbox, ids, strict=True)])
    add_counts(session, outbox)
    queue_message_webhooks(
        session, number, [m | {"id": pk} for m, pk in zip(messages, ids, strict=True)]
    )
    return ids


def outbox_specs(session: Session, ids: Sequence[int]) -> dict[int, str]:
    """id -> spec of those rows that still wait for their bytes to be written."""
    if not ids:
        return {}
    rows = session.execute(
        select(Outbox.id, Outbox.spec).where(
            Outbox.id.in_(list(ids)), Outbox.raw.is_(None), Outbox.spec.is_not(None)
        )
    )
    return {pk: spec for pk, spec in rows if spec is not None}


@dataclass(frozen=True, slots=True)
class Written:
    """A mail the sender wrote: its bytes for outbox row `outbox_pk`, and for the ticket's copy
    (`message_pk`, None once purged) its hash, size, subject and body and attachment rows."""

    outbox_pk: int
    raw: bytes
    message_pk: int | None
    copy: dict[str, Any]  # dedup_key, content_hash, size, subject, body_text
    attachments: Sequence[Attachment]
    copy_raw: bytes | None = None  # what the ticket keeps, when not `raw` itself


_SAVE_OUTBOX_RAW = (
    update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id")).values(raw=bindparam("raw"), spec=None)
)


_SAVE_COPY = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("b_id"))
    .values(
        raw=bindparam("raw"),
        dedup_key=bindparam("dedup_key"),
        content_hash=bindparam("content_hash"),
        size=bindparam("size"),
        subject=bindparam("subject"),
        body_text=bindparam("body_text"),
    )
)


def save_written(session: Session, written: Sequence[Written]) -> None:
    """Store what the sender wrote: the bytes on each outbox row (whose spec is done with), and
    on the ticket's outbound copy with their hash, size and attachment rows."""
    if not written:
        return
    session.execute(_SAVE_OUTBOX_RAW, [{"b_id": w.outbox_pk, "raw": w.raw} for w in written])
    copies = [w for w in written if w.message_pk is not None]
    alive = set(
        session.scalars(select(Message.id).where(Message.id.in_([w.message_pk for w in copies])))
    )
    copies = [w for w in copies if w.message_pk in alive]  # not purged meanwhile
    if not copies:
        return
    session.execute(
        _SAVE_COPY,
        [
            {"b_id": w.message_pk, "raw": w.raw if w.copy_raw is None else w.copy_raw, **w.copy}
            for w in copies
        ],
    )
    files = [
        {
            "message_pk": w.message_pk,
            "filename": a.filename,
            "content_type": a.content_type,
            "size": a.size,
        }
        for w in copies
        for a in w.attachments
    ]
    if files:
        session.execute(insert(_ATTACHMENTS), files)


def claim_outbox(
    session: Session, now: datetime, lease: timedelta, limit: int = 20, kind: str | None = None
) -> list[Outbox]:
    """Due rows (of `kind` only, if given), claimed by pushing their next attempt past the lease
    (SKIP LOCKED on PostgreSQL)."""
    stmt = (
        select(Outbox)
        .options(undefer(Outbox.raw))
        .where(Outbox.state == "queued", Outbox.next_attempt_at <= now)
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
    )
    if kind is not None:
        stmt = stmt.where(Outbox.kind == kind)
    rows = list(session.scalars(dialect.skip_locked(session, stmt)))
    for row in rows:
        row.next_attempt_at = now + lease
    return rows


def renew_outbox(
    session: Session, ids: Sequence[int], stamp: datetime, until: datetime
) -> set[int]:
    """Extend a claim: rows of `ids` still queued under our `stamp` now wait until `until`.
    Returns the ids still ours (a row another sender took after our lease ran out is not)."""
    if not ids:
        return set()
    kept = session.scalars(
        update(Outbox)
        .where(Outbox.id.in_(list(ids)), Outbox.state == "queued", Outbox.next_attempt_at == stamp)
        .values(next_attempt_at=until)
        .returning(Outbox.id)
        .execution_options(synchronize_session=False)
    )
    return set(kept)


_MARK_SENT = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.id == bindparam("b_id"),
        _OUTBOX.c.state == "queued",
        _OUTBOX.c.attempts == bindparam("b_attempts"),
    )
    .values(
        state="sent",
        sent_at=bindparam("at"),
        raw=None,
        last_error=bindparam("error"),
        attempts=_OUTBOX.c.attempts + 1,
    )
    .returning(_OUTBOX.c.kind, _OUTBOX.c.attempts, _OUTBOX.c.next_attempt_at)
)


def mark_sent(
    session: Session, pk: int, attempts: int, at: datetime, error: str | None
) -> tuple[str, int, datetime] | None:
    """Record a delivery onto row `pk` if it is still queued at the attempt `attempts` it was
    claimed with (the bytes are dropped: the ticket's copy is what remains); its (kind,
    attempts, next_attempt_at) then, else None: purged, or recorded already."""
    params = {"b_id": pk, "b_attempts": attempts, "at": at, "error": error}
    row = session.connection().execute(_MARK_SENT, params).first()
    return None if row is None else (row[0], row[1], row[2])


def get_outbox(session: Session, pk: int) -> Outbox | None:
    return session.get(Outbox, pk)


def outbox_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all())


def list_outbox(session: Session, state: str | None = None) -> list[Outbox]:
    stmt = select(Outbox).order_by(Outbox.id)
    if state:
        stmt = stmt.where(Outbox.state == state)
    return list(session.scalars(stmt))
