"""Helpers the repositories share: Core table handles, single-row inserts, bounded counts."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from sqlalchemy import Select, bindparam, func, insert, select
from sqlalchemy.engine import CursorResult, Result

from mailbridge.storage.models import Base, table_of
from mailbridge.storage.uow import Session


def key_of(message_id: str) -> str:
    """The Message-ID index key: a fixed-size hash, whatever the ID's length."""
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()


def rowcount(result: Result[Any]) -> int:
    """Session.execute is typed as returning a Result; for DML it is a CursorResult."""
    return cast(CursorResult[Any], result).rowcount


def insert_returning(session: Session, obj: Base, pk: str) -> int:
    """Core INSERT ... RETURNING for a new row: the ORM's unit of work costs several times more on
    the ingest hot path. Unset attributes fall back to the column defaults."""
    table = table_of(type(obj))
    values = {
        c.key: v for c in table.columns if c.key != pk and (v := getattr(obj, c.key)) is not None
    }
    stmt = _INSERTS.get((table.name, tuple(values)))
    if stmt is None:
        stmt = _INSERTS[(table.name, tuple(values))] = insert(table).returning(table.c[pk])
    return int(session.execute(stmt, values).scalar_one())


_INSERTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def count_up_to(stmt: Select[Any]) -> Select[Any]:
    """count(*) of `stmt`'s rows, reading at most `:at_most` of them: a rate limit only needs
    to know whether its limit is reached, and a busy sender's history must not cost more."""
    return select(func.count()).select_from(stmt.limit(bindparam("at_most")).subquery())
