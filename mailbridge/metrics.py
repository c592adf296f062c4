"""Prometheus metrics and the `/healthz` probe, served on `[metrics] listen`.

Counters and histograms are fed by callbacks (ingest outcomes, pollers, the outbox sender, rule
runs); ticket and outbox gauges are read from the database at scrape time, so every node reports
the cluster's truth and nothing drifts after a restart. Metrics live in a registry of their own,
not prometheus_client's global one, so two daemons in one process (tests) do not collide.

The HTTP side is prometheus_client's WSGI app in a small threaded server: scrapes that wait on
the database never stall the event loop that serves SMTP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailbridge.errors import MailbridgeError
from mailbridge.lifecycle import Status
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.envelope import Outcome, Source
    from mailbridge.storage import Store

log = logging.getLogger("mailbridge.metrics")

OUTCOMES = ("created", "appended", "duplicate", "ignored", "quarantined")
OUTBOX_STATES = ("queued", "sent", "failed")
# ingest takes milliseconds; a slow disk or a contended PostgreSQL shows up in the upper buckets
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Metrics:
    """The metric objects, the callbacks that feed them, and (as a Component) their HTTP endpoint."""

    name = "metrics"

    def __init__(self, store: Store, listen: str | None = None, queues: Sequence[str] = ()) -> None:
        self.store = store
        self.listen = listen
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "mailbridge_messages_ingested",
            "Messages handed to ingest, by source kind and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "mailbridge_ingest_seconds",
            "Time to ingest one message (its share of a group commit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.poller_errors = Counter(
            "mailbridge_poller_errors", "IMAP poller failures.", ["mailbox"], registry=r
        )
        self.poller_last_success = Gauge(
            "mailbridge_poller_last_success_timestamp",
            "Unix time of the last successful poll of a mailbox.",
            ["mailbox"],
            registry=r,
        )
        self.deliveries = Counter(
            "mailbridge_outbox_deliveries",
            "Outbound delivery attempts by result (sent, retry, failed).",
            ["result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "mailbridge_webhook_deliveries",
            "Webhook post attempts by result (sent, retry, failed).",
            ["result"],
            registry=r,
        )
        self.rule_runs = Counter(
            "mailbridge_rule_runs", "Sweeps of a rule (wake = postponements).", ["rule"], registry=r
        )
        self.rule_changes = Counter(
            "mailbridge_rule_changes", "Tickets a rule changed or purged.", ["rule"], registry=r
        )
        self.smtp_auth_failures = Counter(
            "mailbridge_smtp_auth_failures",
            "SMTP AUTH attempts refused for a wrong login or password.",
            registry=r,
        )
        self.smtp_auth_lockouts = Counter(
            "mailbridge_smtp_auth_lockouts",
            "SMTP AUTH lockouts begun, by what is locked out (client address or login).",
            ["scope"],
            registry=r,
        )
        self.smtp_refused = Counter(
            "mailbridge_smtp_connections_refused",
            "SMTP connections answered 421 at connect, by the limit hit (total or client).",
            ["limit"],
            registry=r,
        )
        for label in ("client", "login"):
            self.smtp_auth_lockouts.labels(label)  # the series exist at 0 for alerts
        for label in ("total", "client"):
            self.smtp_refused.labels(label)
        self.sla_breaches = Counter(
            "mailbridge_sla_breaches",
            "SLA targets missed (one per ticket and target, SPEC 8).",
            ["queue", "target"],
            registry=r,
        )
        self.registry.register(DatabaseCollector(store))
        self.assignments = Counter(
            "mailbridge_assignments",
            "Owners given to new tickets, by strategy (round_robin, least_open, sticky, filter).",
            ["strategy"],
            registry=r,
        )
        for label in ("round_robin", "least_open", "sticky", "filter"):
            self.assignments.labels(label)
        self.queue_collector = QueueCollector(store, queues)
        self.registry.register(self.queue_collector)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- callbacks ---------------------------------------------------------------------------

    def on_outcome(self, outcome: Outcome, source: Source, seconds: float) -> None:
        """`Ingestor(on_outcome=...)`: one call per message, after its commit."""
        self.ingested.labels(source.kind, outcome.outcome).inc()
        self.ingest_seconds.observe(max(seconds, 0.0))

    def assigned(self, strategy: str) -> None:
        """`Ingestor.on_assign`: one call per automatic owner."""
        self.assignments.labels(strategy).inc()

    def poller_error(self, mailbox: str) -> None:
        self.poller_errors.labels(mailbox).inc()

    def poller_success(self, mailbox: str, at: datetime) -> None:
        self.poller_errors.labels(mailbox)  # the series exists (at 0) once a mailbox has polled
        self.poller_last_success.labels(mailbox).set(at.timestamp())

    def delivery(self, result: str) -> None:
        self.deliveries.labels(result).inc()

    def webhook_delivery(self, result: str) -> None:
        self.webhook_deliveries.labels(result).inc()

    def rule_run(self, rule: str, changes: int) -> None:
        """`Sweeps(on_rule=...)`: one call per rule per sweep."""
        self.rule_runs.labels(rule).inc()
        self.rule_changes.labels(rule).inc(changes)

    def smtp_auth_failure(self) -> None:
        self.smtp_auth_failures.inc()

    def smtp_auth_lockout(self, scope: str) -> None:
        self.smtp_auth_lockouts.labels(scope).inc()

    def smtp_connection_refused(self, limit: str) -> None:
        self.smtp_refused.labels(limit).inc()

    def sla_breach(self, queue: str, target: str) -> None:
        """`Sweeps(on_breach=...)`: one call per recorded `sla-breach` event."""
        self.sla_breaches.labels(queue, target).inc()

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    # --- Component ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server else None

    async def start(self) -> None:
        if self.listen is None:
            return
        self._server = await asyncio.to_thread(serve, self.listen, self.wsgi_app())
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.listen)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)  # returns once serve_forever has left its loop
        server.server_close()

    def reload(self, settings: Settings) -> None:
        self.queue_collector.queues = [q.name for q in settings.queue_list]
        if settings.metrics.listen != self.listen:
            log.warning("[metrics] listen changed: takes effect after a restart")

    # --- HTTP --------------------------------------------------------------------------------

    def wsgi_app(self) -> WsgiApp:
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start_response)
            if path == "/healthz":
                ok = self.store.healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                return _text(start_response, status, "ok\n" if ok else "database unreachable\n")
            return _text(start_response, "404 Not Found", "try /metrics or /healthz\n")

        return app


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time; a broken database is a gauge, not an error."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        tickets, outbox, up = self._families()
        try:
            with self.store.unit() as session:
                by_status = repo.status_counts(session)
                by_state = repo.outbox_counts(session)
        except MailbridgeError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        # every status is reported, at 0 too, so alerts on a status never see a missing series
        for status in [*Status, *sorted(set(by_status) - set(Status))]:
            tickets.add_metric([str(status)], by_status.get(str(status), 0))
        for state in [*OUTBOX_STATES, *sorted(set(by_state) - set(OUTBOX_STATES))]:
            outbox.add_metric([state], by_state.get(state, 0))
        up.add_metric([], 1)
        yield from (tickets, outbox, up)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("mailbridge_tickets", "Tickets by status.", labels=["status"]),
            GaugeMetricFamily(
                "mailbridge_outbox",
                "Outbox rows by state (queued = queue depth, failed = given up).",
                labels=["state"],
            ),
            GaugeMetricFamily("mailbridge_database_up", "1 if the last scrape read the database."),
        )


class QueueCollector(Collector):
    """Unassigned live tickets per queue, read at scrape time; every configured queue at 0 too."""

    def __init__(self, store: Store, queues: Sequence[str]) -> None:
        self.store = store
        self.queues = list(queues)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            with self.store.unit() as session:
                counts = repo.unassigned_counts(session)
        except MailbridgeError:
            return  # DatabaseCollector reports the database as down
        for queue in [*self.queues, *sorted(set(counts) - set(self.queues))]:
            family.add_metric([queue], counts.get(queue, 0))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "mailbridge_unassigned_tickets",
            "Tickets in new, open, answered or postponed that nobody owns, by queue.",
            labels=["queue"],
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the journal


def serve(listen: str, app: WsgiApp) -> WSGIServer:
    """A threaded WSGI server bound to `host:port` (IPv4 or IPv6)."""
    # config has validated the address; port 0 (any free port) is for tests
    host, _, port_text = listen.rpartition(":")
    host, port = host.strip("[]"), int(port_text)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a hung scraper must not hold the daemon's shutdown

    return make_server(host, port, app, Server, handler_class=_QuietHandler)


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]
