"""Composition root of `mailbridge run`: builds everything from config, starts and stops it in order.

One asyncio process. The database comes first (App.build opens and migrates it), then the
components in `components_for` order; they stop in reverse, so intake (listener, pollers) stops
before the workers behind it. Signals: SIGTERM/SIGINT stop gracefully (exit 0), SIGHUP re-reads
the config and keeps the old one if the new one has errors. systemd is told READY/RELOADING/
STOPPING and fed WATCHDOG pings through $NOTIFY_SOCKET when it asks for them (systemd.py).
`[smtp] workers` > 1 adds listener processes (smtp_workers.py), each built by `run_smtp_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailbridge import interpreter, logging_setup
from mailbridge.app import App
from mailbridge.clock import Clock, system_clock
from mailbridge.component import Component
from mailbridge.config import Settings, describe, load_settings
from mailbridge.config.reload import keep_restart_only
from mailbridge.envelope import Outcome, Source
from mailbridge.errors import ConfigError, StorageUnavailable
from mailbridge.metrics import Metrics
from mailbridge.outbound.sender import OutboxSender, SenderConfig
from mailbridge.parse_pool import ParsePool
from mailbridge.scheduler import Scheduler
from mailbridge.smtp_workers import SmtpWorkers, WorkersConfig
from mailbridge.sources.imap.pollers import ImapConfig, ImapPollers
from mailbridge.sources.smtp import handler as smtp_source
from mailbridge.sources.smtp.listener import ListenerConfig, SmtpListener
from mailbridge.sweeps import SweepConfig, Sweeps
from mailbridge.systemd import ping_watchdog, sd_notify, watchdog_interval

log = logging.getLogger("mailbridge.daemon")

POSTGRESQL_COMMITTERS = 2  # per listener process, at most [database] pool_size


# --- what runs -----------------------------------------------------------------------------


def components_for(app: App, settings: Settings) -> list[Component]:
    """What `run` runs, in start order (stopped in reverse): metrics and workers first, intake last."""
    metrics = Metrics(app.store, settings.metrics.listen, [q.name for q in settings.queue_list])
    app.metrics = metrics
    app.ingestor.on_assign = metrics.assigned
    sender = OutboxSender(
        app.store,
        SenderConfig.from_settings(settings),
        app.clock,
        on_delivery=metrics.delivery,
        on_webhook=metrics.webhook_delivery,
    )

    def after_commit(outcome: Outcome, source: Source, seconds: float) -> None:
        metrics.on_outcome(outcome, source, seconds)
        if outcome.outcome in ("created", "appended"):
            sender.kick()  # acknowledgements and notifications leave now, not at the next poll

    app.ingestor.on_outcome = after_commit
    sweeps = Sweeps(
        app.store,
        SweepConfig.from_settings(settings),
        app.clock,
        app.outbound,
        on_rule=metrics.rule_run,
        on_breach=metrics.sla_breach,
    )
    committers = listener_committers(app, settings)
    processes = settings.smtp.workers
    if processes > 1:
        smtp_source.WORKER_LABEL = " worker=1"
    # started before the sources and stopped after them; the IMAP pollers reach it through
    # the ingestor, the listener parses with it before a mail joins a group commit
    parser = ParsePool.from_settings(settings)
    if parser is not None:
        app.ingestor.parser = parser
    scheduler = Scheduler(sweeps, app.clock)
    pollers = ImapPollers(app, ImapConfig.from_settings(settings))
    listener = SmtpListener(
        app.ingestor,
        ListenerConfig.from_settings(settings),
        ingest_workers=committers,
        metrics=metrics,
        reuse_port=processes > 1,
        parser=parser,
    )
    components: list[Component] = [
        *([parser] if parser is not None else []),
        metrics,
        sender,
        scheduler,
        pollers,
        listener,
    ]
    if processes > 1:
        components.append(SmtpWorkers(WorkersConfig.from_settings(settings)))
    return components


def listener_committers(app: App, settings: Settings) -> int:
    """Group-commit threads per listener process. SQLite has one writer: a second committing
    thread would only wait on its lock. On PostgreSQL, since each committer takes its next batch
    itself (commit.py), fewer committers mean larger batches and less GIL contention: on 2 cores
    with a local server, 1 or 2 committers did 470-510 msg/s at 1.4-2.1 ms CPU per message where
    5 did 355-390 at 2.1-2.5 (smtp-source, 50 sessions). Two rather than one keeps a commit
    going while the other waits on a distant server's round trips and fsync."""
    if app.store.dialect == "sqlite":
        return 1
    return min(POSTGRESQL_COMMITTERS, settings.database.pool_size)


# --- one extra [smtp] worker process (started by smtp_workers.SmtpWorkers) -----------------


def run_smtp_worker(config_path: str, index: int, ready_fd: int) -> int:
    """The body of one extra listener process; answers SIGTERM (drain, exit 0) and SIGHUP."""
    settings = load_settings(config_path)
    logging_setup.configure(settings.log)
    smtp_source.WORKER_LABEL = f" worker={index}"
    return asyncio.run(_worker_main(settings, config_path, ready_fd))


async def _worker_main(settings: Settings, config_path: str, ready_fd: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    executor = ThreadPoolExecutor(4, thread_name_prefix="mailbridge")
    loop.set_default_executor(executor)
    # only the listener's committers use the pool here: one connection each
    app = await asyncio.to_thread(App.build, settings, system_clock)
    committers = listener_committers(app, settings)
    # the same parse deadline as in the main process: a pool of its own ([parse] workers)
    parser = ParsePool.from_settings(settings)
    if parser is not None:
        app.ingestor.parser = parser
    listener = SmtpListener(
        app.ingestor,
        ListenerConfig.from_settings(settings),
        ingest_workers=committers,
        reuse_port=True,
        parser=parser,
    )

    def on_hup() -> None:
        try:
            new = load_settings(config_path)
            listener.reload(new)
            app.reconfigure(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        if parser is not None:
            await parser.start()
        await listener.start()
        # a restarted worker's supervisor does not wait for this: the pipe may be closed
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"1")
        os.close(ready_fd)
        interpreter.settle()
        await stop.wait()
        await listener.stop()
    except OSError as exc:
        log.error("smtp worker cannot start: %s", exc)
        return 1
    finally:
        if parser is not None:
            await parser.stop()
        app.close()
        executor.shutdown(wait=True)
    return 0


# --- the daemon ---------------------------------------------------------------------------


def _executor_size(settings: Settings) -> int:
    # storage work runs in these threads; more than the pool has connections would only queue
    return max(4, min(32, settings.database.pool_size * 2))


class Daemon:
    """Owns the App and the components; `run` is the whole life of `mailbridge run`."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = system_clock,
        config_path: str | Path | None = None,
        app: App | None = None,
        settle: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # interpreter.settle() once started; not for tests, which run many daemons in one process
        self.settle = settle
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
        if self.settle:
            interpreter.settle()  # before READY: its one full collection stalls the loop once
        interval = watchdog_interval()
        watchdog = asyncio.create_task(ping_watchdog(interval)) if interval else None
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
        new, changed = keep_restart_only(self.settings, new)
        for key in changed:
            log.warning("reload: %s changed; takes effect at the next restart", key)
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


async def serve(
    settings: Settings,
    clock: Clock = system_clock,
    stop_event: asyncio.Event | None = None,
    *,
    config_path: str | Path | None = None,
    app: App | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
    settle: bool = False,
) -> None:
    """Run the daemon in this event loop until stop_event is set (tests run it in-process)."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(_executor_size(settings), thread_name_prefix="mailbridge")
    loop.set_default_executor(executor)
    daemon = Daemon(settings, clock, config_path, app, settle=settle)
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
        await serve(
            settings,
            stop_event=stop,
            config_path=config_path,
            on_ready=daemon_ref.append,
            settle=True,
        )
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
