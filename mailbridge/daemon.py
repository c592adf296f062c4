"""Composition root of `mailbridge run`: builds everything from config, starts and stops it in order.

One asyncio process. The database comes first (App.build opens and migrates it), then the
components in `components_for` order; they stop in reverse, so intake (listener, pollers) stops
before the workers behind it. Signals: SIGTERM/SIGINT stop gracefully (exit 0), SIGHUP re-reads
the config and keeps the old one if the new one has errors. systemd is told READY/RELOADING/
STOPPING and fed WATCHDOG pings through $NOTIFY_SOCKET when it asks for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailbridge import logging_setup
from mailbridge.app import App
from mailbridge.clock import Clock, system_clock
from mailbridge.component import Component
from mailbridge.config import Settings, describe, load_settings
from mailbridge.envelope import Outcome, Source
from mailbridge.errors import ConfigError, StorageUnavailable
from mailbridge.metrics import Metrics
from mailbridge.parse_pool import ParsePool
from mailbridge.scheduler import Scheduler
from mailbridge.sender import OutboxSender
from mailbridge.sources.imap import ImapPollers
from mailbridge.sources.smtp import SmtpListener
from mailbridge.sweeps import Sweeps

log = logging.getLogger("mailbridge.daemon")


# --- systemd notification protocol (sd_notify(3)), stdlib only ----------------------------


def sd_notify(*lines: str) -> bool:
    """Send `KEY=value` lines to $NOTIFY_SOCKET; False when not run by systemd (or on error)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if none are wanted."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def _watchdog(interval: float) -> None:
    # pinged from the event loop itself: a stalled loop stops the pings and systemd restarts us
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


# --- the daemon ---------------------------------------------------------------------------


def components_for(app: App, settings: Settings) -> list[Component]:
    """What `run` runs, in start order (stopped in reverse): metrics and workers first, intake last."""
    metrics = Metrics(app.store, settings.metrics.listen, [q.name for q in settings.queue_list])
    app.metrics = metrics
    app.ingestor.on_assign = metrics.assigned
    sender = OutboxSender(
        app, settings, on_delivery=metrics.delivery, on_webhook=metrics.webhook_delivery
    )

    def after_commit(outcome: Outcome, source: Source, seconds: float) -> None:
        metrics.on_outcome(outcome, source, seconds)
        if outcome.outcome in ("created", "appended"):
            sender.kick()  # acknowledgements and notifications leave now, not at the next poll

    app.ingestor.on_outcome = after_commit
    sweeps = Sweeps(
        app.store,
        settings,
        app.clock,
        app.outbound,
        on_rule=metrics.rule_run,
        on_breach=metrics.sla_breach,
    )
    # SQLite has one writer: a second committing thread would only wait on its lock
    workers = 1 if app.store.dialect == "sqlite" else settings.database.pool_size
    # started before the sources and stopped after them; the IMAP pollers reach it through
    # the ingestor, the listener parses with it before a mail joins a group commit
    parser = ParsePool.from_settings(settings)
    if parser is not None:
        app.ingestor.parser = parser
    return [
        *([parser] if parser is not None else []),
        metrics,
        sender,
        Scheduler(sweeps, app.clock),
        ImapPollers(app, settings),
        SmtpListener(
            app.ingestor, settings, ingest_workers=workers, metrics=metrics, parser=parser
        ),
    ]


def _executor_size(settings: Settings) -> int:
    # storage work runs in these threads; more than the pool has connections would only queue
    return max(4, min(32, settings.database.pool_size * 2))


# settings that need a restart: the reload keeps the old values and says so
_RESTART_ONLY = (
    ("database", "url"),
    ("database", "pool_size"),
    ("smtp", "listen"),
    ("smtp", "mode"),
    ("parse", "workers"),
)


class Daemon:
    """Owns the App and the components; `run` is the whole life of `mailbridge run`."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = system_clock,
        config_path: str | Path | None = None,
        app: App | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.config_path = config_path
        self.app = app
        self._own_app = app is None
        self.components: list[Component] = []
        self._reloading: asyncio.Task[bool] | None = None

    async def start(self) -> None:
        if self.app is None:
            # the database first: opening it also applies pending migrations
            self.app = await asyncio.to_thread(App.build, self.settings, self.clock)
        try:
            for component in components_for(self.app, self.settings):
                await component.start()
                self.components.append(component)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:  # one component failing to stop must not keep the others running
                log.exception("stopping %s failed", component.name)
        self.components.clear()
        if self.app is not None and self._own_app:
            self.app.close()

    async def run(
        self, stop_event: asyncio.Event, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Start, report ready, wait for stop_event, stop."""
        await self.start()
        interval = watchdog_interval()
        watchdog = asyncio.create_task(_watchdog(interval)) if interval else None
        seen = describe(self.settings)
        log.info(
            "mailbridge running: config %s; database %s; %s on %s for %s",
            seen["config"],
            seen["database"],
            self.settings.smtp.mode.upper(),
            self.settings.smtp.listen,
            seen["addresses"],
        )
        sd_notify("READY=1", f"STATUS=listening on {self.settings.smtp.listen}")
        if on_ready:
            on_ready()
        try:
            await stop_event.wait()
        finally:
            sd_notify("STOPPING=1", "STATUS=stopping")
            log.info("stopping: finishing sessions in flight")
            if watchdog:
                watchdog.cancel()
            await self.stop()
            log.info("stopped")

    # --- reload (SIGHUP) ----------------------------------------------------------------

    def request_reload(self) -> None:
        if self._reloading and not self._reloading.done():
            log.info("reload already in progress")
            return
        self._reloading = asyncio.create_task(self.reload_from_file())

    async def reload_from_file(self) -> bool:
        sd_notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = await asyncio.to_thread(load_settings, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload failed: keeping the running configuration")
            return False
        finally:
            sd_notify("READY=1")
        return self.reload(new)

    def reload(self, new: Settings) -> bool:
        """Apply new settings to every component, or to none of them. Returns success."""
        new = self._keep_restart_only(new)
        old = self.settings
        applied: list[Component] = []
        try:
            for component in self.components:
                component.reload(new)
                applied.append(component)
        except ConfigError as exc:
            for component in applied:
                component.reload(old)
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload failed: keeping the running configuration")
            return False
        assert self.app is not None
        self.app.reconfigure(new)
        self.settings = new
        log.info("configuration reloaded")
        return True

    def _keep_restart_only(self, new: Settings) -> Settings:
        changes: dict[str, dict[str, object]] = {}
        for section, key in _RESTART_ONLY:
            before = getattr(getattr(self.settings, section), key)
            if getattr(getattr(new, section), key) != before:
                log.warning("reload: %s.%s changed; takes effect at the next restart", section, key)
                changes.setdefault(section, {})[key] = before
        if not changes:
            return new
        sections = {
            name: getattr(new, name).model_copy(update=values) for name, values in changes.items()
        }
        kept = new.model_copy(update=sections)
        kept._source_path = new.source_path
        return kept


async def serve(
    settings: Settings,
    clock: Clock = system_clock,
    stop_event: asyncio.Event | None = None,
    *,
    config_path: str | Path | None = None,
    app: App | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> None:
    """Run the daemon in this event loop until stop_event is set (tests run it in-process)."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(_executor_size(settings), thread_name_prefix="mailbridge")
    loop.set_default_executor(executor)
    daemon = Daemon(settings, clock, config_path, app)
    stop_event = stop_event or asyncio.Event()
    try:
        await daemon.run(stop_event, (lambda: on_ready(daemon)) if on_ready else None)
    finally:
        # storage work still running in threads finishes (and commits) before we return
        executor.shutdown(wait=True)


async def _main(settings: Settings, config_path: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    daemon_ref: list[Daemon] = []

    def on_stop_signal(name: str) -> None:
        if stop.is_set():
            log.info("%s again: already stopping", name)
        else:
            log.info("%s received", name)
        stop.set()

    def on_hup() -> None:
        if daemon_ref:
            log.info("SIGHUP received: reloading configuration")
            daemon_ref[0].request_reload()

    loop.add_signal_handler(signal.SIGTERM, on_stop_signal, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop_signal, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await serve(settings, stop_event=stop, config_path=config_path, on_ready=daemon_ref.append)
    except (OSError, StorageUnavailable) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def run_daemon(config_path: str | None) -> int:
    """`mailbridge run`: exit 0 after a clean stop, 1 if it cannot start, 2 (ConfigError) on bad config."""
    settings = load_settings(
        config_path
    )  # a ConfigError goes to the CLI: one line per problem, exit 2
    logging_setup.configure(settings.log)
    return asyncio.run(_main(settings, config_path))
