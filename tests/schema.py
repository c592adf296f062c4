"""A database at an earlier schema revision, built as that release's daemon built it (its engine,
foreign keys on): what the migration tests upgrade from."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from mailbridge.storage.engine import MIGRATIONS, make_engine


def at_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()
