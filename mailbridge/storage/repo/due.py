"""The tickets each sweep is due to look at (postponements, idle rules, SLA)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    select,
)

from mailbridge.storage.models import (
    Event,
    Ticket,
)
from mailbridge.storage.uow import Session


def due_postponed(session: Session, now: datetime, limit: int = 500) -> list[int]:
    return list(
        session.scalars(
            select(Ticket.number)
            .where(Ticket.status == "postponed", Ticket.postponed_until <= now)
            .order_by(Ticket.postponed_until)
            .limit(limit)
        )
    )


def idle_tickets_in(
    session: Session,
    statuses: Sequence[str],
    idle_since: datetime,
    limit: int = 500,
    not_fired: tuple[str, str] | None = None,
) -> list[int]:
    """Tickets in one of `statuses`, quiet since `idle_since`; with `not_fired = (kind, actor)`,
    only those without such an event in their current quiet spell (remind/escalate fire once
    per spell, so a ticket they already served leaves the candidates)."""
    stmt = select(Ticket.number).where(
        Ticket.status.in_(list(statuses)), Ticket.last_activity_at <= idle_since
    )
    if not_fired is not None:
        kind, actor = not_fired
        fired = select(Event.id).where(
            Event.ticket_number == Ticket.number,
            Event.kind == kind,
            Event.actor == actor,
            Event.at >= Ticket.last_activity_at,
        )
        stmt = stmt.where(~fired.exists())
    return list(session.scalars(stmt.order_by(Ticket.last_activity_at).limit(limit)))


def sla_stale_tickets(session: Session, limit: int = 500) -> list[int]:
    """Tickets whose SLA due times need recomputing (created, or a status change since)."""
    return list(
        session.scalars(
            select(Ticket.number)
            .where(Ticket.sla_stale.is_(True))
            .order_by(Ticket.number)
            .limit(limit)
        )
    )


def sla_due_tickets(session: Session, now: datetime, limit: int = 500) -> list[int]:
    """Tickets with an SLA target due by `now` that is not recorded as breached yet."""
    return list(
        session.scalars(
            select(Ticket.number).where(Ticket.sla_due <= now).order_by(Ticket.sla_due).limit(limit)
        )
    )
