"""Every difference between SQLite and PostgreSQL that mailbridge's queries meet, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, Table, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from mailbridge.errors import StorageUnavailable

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


@contextmanager
def foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite, around a migration (before its transaction begins: inside one the pragma does
    nothing): rebuilding a table, as Alembic's batch mode does to alter one, drops the old table,
    and with foreign keys enforced that DROP first deletes every row, cascading into every table
    that refers to it. Migration 0006 emptied `messages` that way."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def check_foreign_keys(conn: Connection) -> None:
    """After a migration with foreign keys off: refuse to commit one that broke a reference."""
    if conn.dialect.name != "sqlite":
        return
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise StorageUnavailable(
            f"migration left {len(broken)} broken references, e.g. {tuple(broken[0])}"
        )


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


def insert_adding(dialect: str, table: Table, column: str) -> Any:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE column = column + excluded.column: a
    counter row made or added to in one statement, built once per backend and table."""
    stmt = _ADDING.get((dialect, table.name))
    if stmt is None:
        make = pg_insert if dialect == POSTGRESQL else sqlite_insert
        base = make(table)
        stmt = _ADDING[(dialect, table.name)] = base.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={column: table.c[column] + base.excluded[column]},
        )
    return stmt


_ADDING: dict[tuple[str, str], Any] = {}


def skip_locked(session: Session, stmt: _S) -> _S:
    """Lock the selected rows, skipping those another node holds (PostgreSQL); SQLite has one
    writer at a time anyway, and no row locks."""
    if name(session) == POSTGRESQL:
        return stmt.with_for_update(skip_locked=True)
    return stmt


def locked(session: Session, stmt: _S) -> _S:
    """Lock the selected rows (FOR UPDATE, waiting for another node that holds one) on
    PostgreSQL; SQLite's one writer needs no row locks."""
    if name(session) == POSTGRESQL:
        return stmt.with_for_update()
    return stmt


def locks_rows(session: Session) -> bool:
    """Whether `SELECT ... FOR UPDATE` means anything on this backend."""
    return name(session) == POSTGRESQL


class IdSource:
    """Primary keys for rows a batch holds back: known when the row is added, so the rows that
    refer to it can be held too, and all of them written with one executemany per table.

    SQLite has one writer (every transaction begins IMMEDIATE), so the batch counts up from the
    table's highest key, or its AUTOINCREMENT high-water mark, read once; `mark`/`reset` give the
    keys of a failed savepoint back, so ticket numbers stay gapless. PostgreSQL takes them from
    the column's sequence, `block` at a time (a key taken is never given back there: unused ones
    are gaps, as a rolled-back INSERT leaves today).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.postgresql = name(session) == POSTGRESQL
        self._next: dict[str, int] = {}
        self._spare: dict[str, list[int]] = {}

    def take(self, table: Table, column: str, block: int = 1) -> int:
        if self.postgresql:
            spare = self._spare.setdefault(table.name, [])
            if not spare:
                spare += (
                    self.session.connection()
                    .execute(
                        text(
                            "SELECT nextval(pg_get_serial_sequence(:t, :c))"
                            " FROM generate_series(1, :n)"
                        ),
                        {"t": table.name, "c": column, "n": block},
                    )
                    .scalars()
                )
            return int(spare.pop(0))
        if table.name not in self._next:
            self._next[table.name] = self._highest(table, column) + 1
        key = self._next[table.name]
        self._next[table.name] = key + 1
        return key

    def _highest(self, table: Table, column: str) -> int:
        connection = self.session.connection()
        top = connection.execute(select(func.max(table.c[column]))).scalar() or 0
        if table.kwargs.get("sqlite_autoincrement"):
            # AUTOINCREMENT never reuses a key, not even the key of a row deleted since
            seq = connection.exec_driver_sql(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)
            ).scalar()
            top = max(top, int(seq or 0))
        return int(top)

    def mark(self) -> dict[str, int]:
        return dict(self._next)

    def reset(self, mark: dict[str, int]) -> None:
        self._next = dict(mark)
