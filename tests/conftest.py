"""Shared fixtures: databases (SQLite always, PostgreSQL when configured), settings, a set clock, the app."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailbridge.clock import FixedClock
from tests.env import CORPUS, IN_CI, PG_URL, REPO  # noqa: F401 (CORPUS, REPO: tests written before tests/env.py)


def _pg_admin_url() -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(PG_URL).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    )


def create_pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh database on the test server, and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not PG_URL:
        reason = "PostgreSQL tests need MAILBRIDGE_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1/postgres)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must run them")
        pytest.skip(reason)
    name = f"mb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    url = make_url(_pg_admin_url()).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mailbridge.db"
        return
    url, drop = create_pg_database()
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mailbridge.db"


@pytest.fixture
def pg_url() -> Iterator[str]:
    url, drop = create_pg_database()
    yield url
    drop()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC))


BASE_CONFIG = """
[database]
url = "{url}"

[smtp]
addresses = ["support@example.com"]

[agents]
addresses = ["alice@example.com"]
domains = ["agents.example.com"]
trusted_authserv_ids = ["mx.example.com"]
notify = ["team@example.com"]

[outbound]
from_address = "support@example.com"
"""


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., object]:
    """Settings from TOML text; `{url}` in it is replaced by the database URL given."""
    from mailbridge.config import parse_settings

    def make(url: str, extra: str = "", base: str = BASE_CONFIG) -> object:
        text = base.replace("{url}", url) + "\n" + extra
        path = tmp_path / "mailbridge.toml"
        path.write_text(text)
        return parse_settings(text, str(path))

    return make


@pytest.fixture
def make_app(
    make_settings: Callable[..., object], clock: FixedClock
) -> Iterator[Callable[..., object]]:
    from mailbridge.app import App

    apps: list[App] = []

    def make(url: str, extra: str = "", base: str = BASE_CONFIG) -> App:
        app = App.build(make_settings(url, extra, base), clock)  # type: ignore[arg-type]
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., object], db_url: str) -> object:
    """The core on SQLite and on PostgreSQL, with a set clock."""
    return make_app(db_url)


@pytest.fixture
def sqlite_app(make_app: Callable[..., object], sqlite_url: str) -> object:
    return make_app(sqlite_url)


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., object]]:
    """Starts private Postfix instances (tests/fixtures/postfix.py); all stopped after the test."""
    from tests.fixtures.postfix import postfix_servers

    with postfix_servers() as make:
        yield make
