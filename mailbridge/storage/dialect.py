"""Every difference between SQLite and PostgreSQL that mailbridge's queries meet, in one place."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

POSTGRESQL = "postgresql"
_S = TypeVar("_S", bound=Select[Any])


def name(session: Session) -> str:
    return session.get_bind().dialect.name


def insert_ignore(session: Session, table: Table, rows: list[dict[str, object]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on either backend, on the session's connection."""
    if rows:
        session.connection().execute(insert_ignoring(name(session), table), rows)


def insert_ignoring(dialect: str, table: Table) -> Any:
    """The statement `insert_ignore` runs, built once per backend and table."""
    stmt = _IGNORING.get((dialect, table.name))
    if stmt is None:
        make = pg_insert if dialect == POSTGRESQL else sqlite_insert
        stmt = _IGNORING[(dialect, table.name)] = make(table).on_conflict_do_nothing()
    return stmt


_IGNORING: dict[tuple[str, str], Any] = {}


def skip_locked(session: Session, stmt: _S) -> _S:
    """Lock the selected rows, skipping those another node holds (PostgreSQL); SQLite has one
    writer at a time anyway, and no row locks."""
    if name(session) == POSTGRESQL:
        return stmt.with_for_update(skip_locked=True)
    return stmt


def locks_rows(session: Session) -> bool:
    """Whether `SELECT ... FOR UPDATE` means anything on this backend."""
    return name(session) == POSTGRESQL
