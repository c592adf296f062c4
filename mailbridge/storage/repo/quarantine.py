"""Quarantine entries: mail parked with its reason, raw, until retried or released."""

from __future__ import annotations

from sqlalchemy import (
    select,
)
from sqlalchemy.orm import undefer

from mailbridge.storage.models import (
    Quarantine,
)
from mailbridge.storage.uow import Session


def add_quarantine(session: Session, entry: Quarantine) -> Quarantine:
    session.add(entry)
    session.flush()
    return entry


def list_quarantine(
    session: Session, include_ignored: bool, include_released: bool
) -> list[Quarantine]:
    stmt = select(Quarantine).order_by(Quarantine.id)
    if not include_ignored:
        stmt = stmt.where(Quarantine.kind == "quarantined")
    if not include_released:
        stmt = stmt.where(Quarantine.state == "held")
    return list(session.scalars(stmt))


def get_quarantine(session: Session, pk: int, with_raw: bool = False) -> Quarantine | None:
    opts = [undefer(Quarantine.raw)] if with_raw else []
    return session.get(Quarantine, pk, options=opts)
