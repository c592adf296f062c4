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
from mailbridge.storage.repo.base import count_up_to
from mailbridge.storage.repo.events import queue_message_webhooks
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
    at its copy). Returns the copies' ids, in order."""
    if not messages:
        return []
    ids = session.rows.add_messages(list(messages))
    add_thread_keys(session, number, [m["message_id"] for m in messages])
    session.rows.add_outbox([row | {"message_pk": pk} for row, pk in zip(outbox, ids, strict=True)])
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


_OUTBOX_TO = select(Outbox.id).where(
    Outbox.kind == bindparam("kind"),
    Outbox.rcpt_key == bindparam("rcpt_key"),
    Outbox.created_at >= bindparam("since"),
)


_COUNT_OUTBOX_TO = count_up_to(_OUTBOX_TO)


def count_outbox_to(
    session: Session, kind: str, rcpt_key: str, since: datetime, at_most: int
) -> int:
    """Rows of `kind` to `rcpt_key` queued since `since`, counted up to `at_most`."""
    # built once: building the statement costs more than running it (live ingest, per ack)
    params = {"kind": kind, "rcpt_key": rcpt_key, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_OUTBOX_TO, params) or 0


_OUTBOX_KIND = select(Outbox.id).where(
    Outbox.kind == bindparam("kind"), Outbox.created_at >= bindparam("since")
)


_COUNT_OUTBOX_KIND = count_up_to(_OUTBOX_KIND)


def count_outbox_kind(
    session: Session, kind: str, since: datetime, at_most: int, domain: str | None = None
) -> int:
    """Rows of `kind` queued since `since`, all of them or those whose first recipient is at
    `domain` (acknowledgement limits), counted up to `at_most`."""
    params: dict[str, Any] = {"kind": kind, "since": since, "at_most": at_most}
    if domain is None:
        return session.scalar(_COUNT_OUTBOX_KIND, params) or 0
    pattern = "%@" + domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = count_up_to(_OUTBOX_KIND.where(Outbox.rcpt_key.like(pattern, escape="\\")))
    return session.scalar(stmt, params) or 0


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


def get_outbox(session: Session, pk: int) -> Outbox | None:
    return session.get(Outbox, pk)


def outbox_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all())


def list_outbox(session: Session, state: str | None = None) -> list[Outbox]:
    stmt = select(Outbox).order_by(Outbox.id)
    if state:
        stmt = stmt.where(Outbox.state == state)
    return list(session.scalars(stmt))
