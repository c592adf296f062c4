"""Ticket events, and the webhook posts that writing them queues (SPEC 9)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from mailbridge.storage.models import Event
from mailbridge.storage.uow import Session, WebhookRows


class EventRecord(Protocol):
    """What `add_events` reads of an event (lifecycle.Record; storage does not import it)."""

    @property
    def at(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def from_status(self) -> str | None: ...
    @property
    def to_status(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...


def ticket_events(session: Session, number: int) -> list[Event]:
    """The ticket's events, oldest first (inside a batch, with those it still holds)."""
    return session.rows.events(number)


def all_events(session: Session) -> list[Event]:
    return list(session.scalars(select(Event).order_by(Event.ticket_number, Event.at, Event.id)))


def add_events(
    session: Session, number: int, records: Iterable[EventRecord], message_pk: int | None
) -> None:
    records = list(records)  # read twice: the events, then the webhooks they cause
    rows = [
        {
            "ticket_number": number,
            "at": r.at,
            "kind": str(r.kind),
            "actor": r.actor[:320],
            "from_status": r.from_status and str(r.from_status),
            "to_status": r.to_status and str(r.to_status),
            "detail": r.detail,
            "message_pk": message_pk,
        }
        for r in records
    ]
    session.rows.add_events(rows)
    queue_webhooks(session, number, records)


def queue_webhooks(session: Session, number: int, records: Iterable[EventRecord]) -> None:
    """Webhook posts for the events just written, in their transaction (SPEC 9): `App` gives the
    `webhooks.Subscriptions` to every session of the store; without them nothing is queued."""
    hooks = session.webhooks
    if not hooks:
        return
    ticket = session.rows.ticket(number)
    if ticket is None:
        return
    session.rows.add_outbox(hooks.rows(ticket, records))


def queue_message_webhooks(session: Session, number: int, messages: list[dict[str, Any]]) -> None:
    """A `message` webhook for each message just stored on ticket `number`, in its transaction
    (SPEC 9); messages write no event of their own, so `add_events` cannot do it."""
    hooks = session.webhooks
    if not hooks or (ticket := session.rows.ticket(number)) is None:
        return
    session.rows.add_outbox(hooks.message_rows(ticket, messages))


def install_webhooks(sessions: sessionmaker[Session], subscriptions: WebhookRows | None) -> None:
    """Make every later session of `sessions` (the store's) queue webhooks for its events."""
    sessions.configure(webhooks=subscriptions)
