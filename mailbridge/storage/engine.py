"""Engines, sessions and migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailbridge.errors import StorageUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
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


class Store:
    """The database: sessions framed as units of work, and the schema's migrations."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def unit(self) -> Iterator[Session]:
        """One transaction: commits when the block ends, rolls back on any exception."""
        try:
            with self.sessions() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"database error: {exc.__class__.__name__}: {exc}") from exc

    def upgrade(self, first_queue: str = "support") -> str:
        """Apply pending migrations; returns the revision the database is at. Tickets from
        before queues existed land in `first_queue`."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            cfg.attributes["first_queue"] = first_queue
            command.upgrade(cfg, "head")
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())

    def is_current(self) -> bool:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        try:
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            return False
        return current == head

    def healthy(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()


def open_store(
    url: str, pool_size: int = 5, migrate: bool = True, first_queue: str = "support"
) -> Store:
    """Open the database, migrating it to the current schema first (safe on several nodes at once)."""
    store = Store(make_engine(url, pool_size))
    if migrate and not store.is_current():
        try:
            store.upgrade(first_queue)
        except SQLAlchemyError as exc:
            raise StorageUnavailable(
                f"cannot migrate {make_url(url).render_as_string()}: {exc}"
            ) from exc
    return store
