"""Every difference between SQLite and PostgreSQL that mailbridge's queries meet, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

POSTGRESQL = "postgresql"
# taken by whichever node migrates a PostgreSQL database, so two nodes starting at once do not race
_MIGRATION_LOCK = 0x6D61696C


def make_engine(url: str, pool_size: int = 5) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    # a database that drops packets must fail /healthz and commits quickly, not hang for minutes
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy, not pysqlite, decide when transactions begin (savepoints work then)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit fsyncs the WAL, so a 250 or an IMAP flag that follows a commit
        # survives a power loss (NORMAL only syncs at checkpoints); group commit keeps it cheap
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # take the write lock up front: a deferred transaction that later writes can deadlock
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def lock_migrations(conn: Connection) -> None:
    """Hold the migration lock until `conn`'s transaction ends (SQLite has one writer anyway)."""
    if conn.dialect.name == POSTGRESQL:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})


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
