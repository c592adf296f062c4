"""The Prometheus endpoint and /healthz over real HTTP: counters move with ingest and rules, the
ticket gauges follow the database, and health fails when the database is gone."""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailbridge.app import App
from mailbridge.envelope import Envelope, Source
from mailbridge.metrics import Metrics
from mailbridge.storage.engine import Store, make_engine
from mailbridge.sweeps import SweepConfig, Sweeps
from tests.configs import MakeApp, MakeSettings
from tests.mail import make_mail
from tests.tickets import FILE

SMTP = Source("smtp", "127.0.0.1:2525", live=True)


class Endpoint:
    """A started Metrics component on a free port, with helpers to scrape it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        asyncio.run(metrics.start())
        self.base = f"http://127.0.0.1:{metrics.port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def stop(self) -> None:
        asyncio.run(self.metrics.stop())


@pytest.fixture
def endpoint_for() -> Iterator[Any]:
    started: list[Endpoint] = []

    def start(store: Store) -> Endpoint:
        endpoint = Endpoint(Metrics(store, "127.0.0.1:0"))
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.stop()


def test_scrape_sees_ingest_counters_and_ticket_gauges_move(app: App, endpoint_for: Any) -> None:
    endpoint = endpoint_for(app.store)
    app.ingestor.on_outcome = endpoint.metrics.on_outcome
    assert endpoint.value("mailbridge_tickets", status="new") == 0
    assert (
        endpoint.value("mailbridge_messages_ingested_total", source="smtp", outcome="created")
        is None
    )

    first = make_mail(subject="one")
    app.ingestor.accept(first, Envelope(), SMTP)
    app.ingestor.accept(make_mail(subject="two"), Envelope(), SMTP)
    app.ingestor.accept(first, Envelope(), FILE)

    assert (
        endpoint.value("mailbridge_messages_ingested_total", source="smtp", outcome="created") == 2
    )
    assert (
        endpoint.value("mailbridge_messages_ingested_total", source="file", outcome="duplicate")
        == 1
    )
    assert endpoint.value("mailbridge_ingest_seconds_count") == 3
    assert endpoint.value("mailbridge_tickets", status="new") == 2
    assert endpoint.value("mailbridge_tickets", status="spam") == 0
    assert endpoint.value("mailbridge_database_up") == 1

    app.actions.act(1, "spam", "cli:test")
    assert endpoint.value("mailbridge_tickets", status="new") == 1
    assert endpoint.value("mailbridge_tickets", status="spam") == 1


def test_outbox_rules_and_pollers_are_exposed(
    app: App, endpoint_for: Any, make_settings: MakeSettings, db_url: str, clock: Any
) -> None:
    endpoint = endpoint_for(app.store)
    metrics = endpoint.metrics
    settings = make_settings(
        db_url,
        '[[rules]]\nname = "auto-close"\nwhen = "resolved"\nidle_for = "3d"\nthen = "closed"\n',
    )
    number = app.ingestor.accept(make_mail(), Envelope(), FILE).ticket
    app.actions.act(number, "resolve", "cli:test")
    sweeps = Sweeps(
        app.store, SweepConfig.from_settings(settings), app.clock, on_rule=metrics.rule_run
    )
    sweeps.run(clock.now)
    sweeps.run(clock.now + timedelta(days=3))

    assert endpoint.value("mailbridge_rule_runs_total", rule="auto-close") == 2
    assert endpoint.value("mailbridge_rule_changes_total", rule="auto-close") == 1
    assert endpoint.value("mailbridge_rule_runs_total", rule="wake") == 2
    assert endpoint.value("mailbridge_rule_changes_total", rule="wake") == 0
    assert endpoint.value("mailbridge_tickets", status="closed") == 1
    for state in ("queued", "sent", "failed"):
        assert endpoint.value("mailbridge_outbox", state=state) is not None

    metrics.poller_success("support", datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    metrics.poller_error("support")
    metrics.delivery("retry")
    assert (
        endpoint.value("mailbridge_poller_last_success_timestamp", mailbox="support")
        == datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp()
    )
    assert endpoint.value("mailbridge_poller_errors_total", mailbox="support") == 1
    assert endpoint.value("mailbridge_outbox_deliveries_total", result="retry") == 1


def test_healthz_and_unknown_paths(app: App, endpoint_for: Any) -> None:
    endpoint = endpoint_for(app.store)
    assert endpoint.get("/healthz") == (200, "ok\n")
    assert endpoint.get("/nope")[0] == 404


def test_healthz_fails_when_the_sqlite_database_is_gone(
    make_app: MakeApp, tmp_path: Path, endpoint_for: Any
) -> None:
    app = make_app(f"sqlite:///{tmp_path}/db/mailbridge.db")
    endpoint = endpoint_for(app.store)
    assert endpoint.get("/healthz")[0] == 200
    app.store.engine.dispose()
    shutil.rmtree(tmp_path / "db")
    assert endpoint.get("/healthz") == (503, "database unreachable\n")
    # the scrape itself still answers, saying the database is down
    assert endpoint.value("mailbridge_database_up") == 0


def test_healthz_fails_when_postgresql_is_unreachable(endpoint_for: Any) -> None:
    store = Store(make_engine("postgresql://mailbridge@127.0.0.1:1/mailbridge"))
    try:
        endpoint = endpoint_for(store)
        assert endpoint.get("/healthz")[0] == 503
        assert endpoint.value("mailbridge_database_up") == 0
    finally:
        store.close()


def test_no_listen_address_means_no_server(app: App) -> None:
    metrics = Metrics(app.store, None)
    asyncio.run(metrics.start())
    assert metrics.port is None
    asyncio.run(metrics.stop())


def test_two_instances_do_not_share_a_registry(app: App) -> None:
    a, b = Metrics(app.store), Metrics(app.store)
    a.rule_run("x", 1)
    assert b'mailbridge_rule_runs_total{rule="x"}' in a.exposition()
    assert b'mailbridge_rule_runs_total{rule="x"}' not in b.exposition()


def test_unassigned_per_queue_and_assignments_by_strategy(
    make_app: MakeApp, sqlite_url: str
) -> None:
    app = make_app(
        sqlite_url,
        extra='[[queues]]\nname = "support"\naddresses = ["support@example.com"]\n'
        '[[queues]]\nname = "billing"\naddresses = ["billing@example.com"]\n'
        'members = ["alice@example.com"]\nassign = "round_robin"\n',
    )
    endpoint = Endpoint(Metrics(app.store, "127.0.0.1:0", ["support", "billing"]))
    try:
        app.ingestor.on_assign = endpoint.metrics.assigned
        assert endpoint.value("mailbridge_unassigned_tickets", queue="billing") == 0
        assert endpoint.value("mailbridge_assignments_total", strategy="round_robin") == 0
        app.ingestor.accept(make_mail(to="billing@example.com"), Envelope(), SMTP)
        app.ingestor.accept(make_mail(to="support@example.com"), Envelope(), SMTP)
        app.ingestor.accept(make_mail(to="support@example.com"), Envelope(), SMTP)
        assert endpoint.value("mailbridge_unassigned_tickets", queue="support") == 2
        assert endpoint.value("mailbridge_unassigned_tickets", queue="billing") == 0
        assert endpoint.value("mailbridge_assignments_total", strategy="round_robin") == 1
    finally:
        endpoint.stop()
