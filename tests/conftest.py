"""The shared fixtures: databases (SQLite always, PostgreSQL when configured), a set clock, the
config builder and the App, the aiosmtpd sink and the Desk around it, a private Dovecot and Postfix.

Tests import nothing from here: what they need by name (the config text, the fixtures' types, the
servers) lives in tests/configs.py, tests/desk.py and bench/servers/.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from bench.servers.dovecot import DovecotServer
from bench.servers.dovecot import missing_reason as dovecot_missing
from bench.servers.smtp_sink import SmtpSink
from mailbridge.app import App
from mailbridge.clock import FixedClock
from mailbridge.config import Settings
from tests.configs import AGENTS, BASE_CONFIG, TRUSTED, MakeApp, MakeSettings, mailbridge_toml
from tests.desk import ACK, Desk, MakeDesk
from tests.env import IN_CI, PG_URL, require
from tests.postfix import PostfixServer
from tests.postfix import missing_reason as postfix_missing

# --- databases and time --------------------------------------------------------------------


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


# --- config and the core -------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """Settings from TOML text; `{url}` in it is replaced by the database URL given."""
    from mailbridge.config import parse_settings

    def make(url: str, extra: str = "", base: str = BASE_CONFIG) -> Settings:
        text = base.replace("{url}", url) + "\n" + extra
        path = tmp_path / "mailbridge.toml"
        path.write_text(text)
        return parse_settings(text, str(path))

    return make


@pytest.fixture
def make_app(make_settings: MakeSettings, clock: FixedClock) -> Iterator[MakeApp]:
    apps: list[App] = []

    def make(url: str, extra: str = "", base: str = BASE_CONFIG) -> App:
        app = App.build(make_settings(url, extra, base), clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: MakeApp, db_url: str) -> App:
    """The core on SQLite and on PostgreSQL, with a set clock."""
    return make_app(db_url)


@pytest.fixture
def sqlite_app(make_app: MakeApp, sqlite_url: str) -> App:
    return make_app(sqlite_url)


# --- the core with an aiosmtpd sink as smarthost -------------------------------------------


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink.running() as running:
        yield running


@pytest.fixture
def make_desk(make_app: MakeApp, sqlite_url: str, clock: FixedClock) -> MakeDesk:
    def make(
        sink: SmtpSink,
        url: str | None = None,
        tickets: str = ACK,
        agents: str = "",
        outbound: str | None = None,
        smtp: str = "",
        **sender: Any,
    ) -> Desk:
        text = mailbridge_toml(
            url or sqlite_url,
            smtp=smtp,
            agents=AGENTS + TRUSTED + agents,
            tickets=tickets,
            outbound=outbound if outbound is not None else sink.outbound_toml(),
        )
        return Desk(make_app(url or sqlite_url, base=text), sink, clock, **sender)

    return make


@pytest.fixture
def desk(make_desk: MakeDesk, sink: SmtpSink) -> Desk:
    return make_desk(sink)


# --- private Dovecot and Postfix -----------------------------------------------------------


class Startable(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...


Server = TypeVar("Server", bound=Startable)


@contextlib.contextmanager
def started(kind: Callable[..., Server]) -> Iterator[Callable[..., Server]]:
    """`make(...)` builds and starts a server; one that cannot start fails the test; every one
    made is closed at the end."""
    servers: list[Server] = []

    def make(*args: Any, **options: Any) -> Server:
        server = kind(*args, **options)
        servers.append(server)
        try:
            server.start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., DovecotServer]]:
    """Starts private Dovecots (bench/servers/dovecot.py; `make(tls=True)` for TLS). Skips when
    Dovecot cannot run here; in CI (CI=true) fails instead."""
    require(dovecot_missing(), "the IMAP tests")
    with started(DovecotServer) as make:
        yield make


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    """A started private Dovecot; `dovecot.stop()` / `dovecot.start()` simulate an outage."""
    return dovecot_factory()


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., PostfixServer]]:
    """`make(nexthop, ...)` starts a private Postfix (tests/postfix.py). Skips when Postfix cannot
    run here; in CI fails instead."""
    require(postfix_missing(), "the Postfix tests")
    with started(PostfixServer) as make:
        yield make
