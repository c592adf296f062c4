"""Engines, sessions and migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from mailbridge.errors import StorageUnavailable
from mailbridge.storage import dialect
from mailbridge.storage.batch import Batch
from mailbridge.storage.dialect import make_engine
from mailbridge.storage.uow import Session

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
    """The database: sessions framed as units of work and batches, and the schema's migrations."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(
            engine, class_=Session, expire_on_commit=False, autoflush=False
        )

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

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction for many mails (see `uow.Batch`): commits when the block ends, with
        the rows it held; rolls back on any exception."""
        with self.unit() as session:
            batch = session.rows = Batch(session)
            yield batch
            batch.flush()

    @contextmanager
    def trial(self) -> Iterator[Batch]:
        """A batch that is always rolled back: decide as ingest would, write nothing."""
        with self.sessions() as session:
            session.begin()
            batch = session.rows = Batch(session)
            try:
                yield batch
            finally:
                session.rollback()

    def upgrade(self, first_queue: str = "support") -> str:
        """Apply pending migrations; returns the revision the database is at. Tickets from
        before queues existed land in `first_queue`."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with (
            self.engine.connect() as conn,
            dialect.foreign_keys_off(conn),
            conn.begin(),
        ):
            dialect.lock_migrations(conn)
            cfg.attributes["connection"] = conn
            cfg.attributes["first_queue"] = first_queue
            command.upgrade(cfg, "head")
            dialect.check_foreign_keys(conn)
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
