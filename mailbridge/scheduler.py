"""The daemon's scheduler: APScheduler running a few fixed-ID, idempotent sweeps.

No job store: jobs are recreated at every start and due times live in ticket columns, so the
scheduler holds no state (APScheduler's own advice: job stores must never be shared between
processes). Several nodes may each run it; `Sweeps` makes that safe. The first sweep runs at
start, which is how a daemon started after downtime catches up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailbridge.clock import Clock, system_clock
from mailbridge.errors import MailbridgeError

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.sweeps import Change, Sweeps

log = logging.getLogger("mailbridge.scheduler")

SWEEP_JOB = "sweeps"


class Scheduler:
    """A Component: `start` schedules the sweeps (the first one immediately), `stop` ends them."""

    name = "scheduler"

    def __init__(
        self,
        sweeps: Sweeps,
        clock: Clock = system_clock,
        interval: float = 30.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.sweeps = sweeps
        self.clock = clock
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.runs = 0  # completed sweeps, successful or not (tests wait on it)
        self._scheduler: AsyncIOScheduler | None = None
        self._halt = threading.Event()
        self._inflight: asyncio.Future[list[Change]] | None = None

    async def start(self) -> None:
        self._halt.clear()
        quiet = logging.getLogger("apscheduler.executors")
        if quiet.level == logging.NOTSET:
            # "Running job ... executed successfully" every 30 s would drown the journal; the
            # sweep logs its own transitions, and failures still show at WARNING and above
            quiet.setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        scheduler.add_job(
            self._sweep,
            "interval",
            seconds=self.interval,
            id=SWEEP_JOB,
            name="postponements and [[rules]]",
            replace_existing=True,
            max_instances=1,  # a slow catch-up is never overlapped by the next tick
            coalesce=True,  # ticks missed while busy or suspended become one run
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),  # catch up at once, do not wait an interval
        )
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        if self._scheduler is None:
            return
        self._scheduler.pause()
        self._halt.set()  # the sweep stops between tickets; each ticket is committed on its own
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            try:
                await asyncio.wait_for(asyncio.shield(inflight), self.stop_timeout)
            except TimeoutError:
                log.warning("sweep still running after %ss; stopping anyway", self.stop_timeout)
        self._scheduler.shutdown(wait=False)
        self._scheduler = None

    def reload(self, settings: Settings) -> None:
        """New `[[rules]]` apply from the next sweep on; a sweep in progress finishes with the old."""
        self.sweeps.reload(settings)
        log.info("rules reloaded: %s", ", ".join(r.name for r in settings.rules) or "none")

    async def run_once(self) -> list[Change]:
        """One sweep now, as of the clock (what the job runs)."""
        loop = asyncio.get_running_loop()
        at = self.clock()
        # database work happens in a thread so the event loop keeps serving SMTP and watchdog pings
        self._inflight = loop.run_in_executor(None, self.sweeps.run, at, False, self._halt)
        return await self._inflight

    async def _sweep(self) -> None:
        try:
            changes = await self.run_once()
        except MailbridgeError as exc:
            # the database is away: log and let the next tick retry; sweeps are idempotent
            log.error("sweep failed: %s", exc)
        except Exception:
            log.exception("sweep failed")
        else:
            if changes:
                log.info("sweep: %d tickets changed", len(changes))
        finally:
            self.runs += 1
