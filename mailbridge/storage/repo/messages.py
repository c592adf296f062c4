"""Stored mail: the messages on a ticket and their attachment rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import undefer

from mailbridge.storage.models import Attachment, Message
from mailbridge.storage.repo.events import queue_message_webhooks
from mailbridge.storage.uow import Session, message_row

_HOOK_COLUMNS = ("message_id", "direction", "author_kind", "from_addr", "subject", "stored_at")


def add_message(session: Session, message: Message, attachments: Sequence[Attachment]) -> Message:
    """Add a message and its attachment rows; returns it with its id (not tracked further)."""
    row = message_row(message)
    del row["id"]
    (message.id,) = session.rows.add_messages([row])
    session.rows.add_attachments(
        [
            {
                "message_pk": message.id,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
            }
            for a in attachments
        ]
    )
    message.attachments = list(attachments)
    queue_message_webhooks(
        session,
        message.ticket_number,
        [{c: getattr(message, c) for c in _HOOK_COLUMNS} | {"id": message.id}],
    )
    return message


def get_message(session: Session, pk: int, with_raw: bool = False) -> Message | None:
    opts = [undefer(Message.raw)] if with_raw else []
    return session.get(Message, pk, options=opts)


def ticket_messages(session: Session, number: int) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(Message.ticket_number == number)
            .order_by(Message.stored_at, Message.id)
        )
    )


def message_ids_before(
    session: Session, number: int, before_pk: int, limit: int = 1000
) -> list[str]:
    """The ticket's Message-IDs stored before message `before_pk`, oldest first (the References
    of an outbound mail written after it was queued: what the ticket held then)."""
    return list(
        session.scalars(
            select(Message.message_id)
            .where(
                Message.ticket_number == number,
                Message.id < before_pk,
                Message.message_id.is_not(None),
            )
            .order_by(Message.id)
            .limit(limit)
        )
    )


def last_customer_message_id(session: Session, number: int) -> str | None:
    """The Message-ID of the ticket's latest customer mail that has one (one a batch holds
    is the latest: its id is higher)."""
    for row in reversed(list(session.rows.held_messages())):
        if (
            row["ticket_number"] == number
            and row["author_kind"] == "customer"
            and row["message_id"]
        ):
            return str(row["message_id"])
    return session.scalar(
        select(Message.message_id)
        .where(
            Message.ticket_number == number,
            Message.author_kind == "customer",
            Message.message_id.is_not(None),
            Message.message_id != "",
        )
        .order_by(Message.stored_at.desc(), Message.id.desc())
        .limit(1)
    )


def raw_of_messages(session: Session, pks: Sequence[int]) -> dict[int, bytes]:
    """pk -> raw bytes of those stored messages that still exist."""
    if not pks:
        return {}
    rows = session.execute(select(Message.id, Message.raw).where(Message.id.in_(list(set(pks)))))
    return {pk: raw for pk, raw in rows}
