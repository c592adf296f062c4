"""Outbox delivery: claim due rows, hand them to the smarthost, record what happened.

Exactly once, also with several senders on one PostgreSQL database: a row is claimed in its own
transaction (`claim_outbox` pushes `next_attempt_at` past a short lease, SKIP LOCKED), which
commits before any SMTP traffic; a heartbeat renews the lease while the batch is being sent, so a
dead node's rows come free after `LEASE`, not after the worst case of a whole batch. The result
is recorded in a second transaction per row; when that commit fails, the result is kept in
memory and recorded before anything else is claimed, and the row is never sent again by this
node. What remains: the smarthost said 250, the commit of "sent" failed, and the process died
(or lost the database for longer than the lease) before it could record it: then the row is sent
again once the lease runs out.

Queued mail arrives without its bytes: decided at ingest, written here (see `mailbridge.outbound`).

4xx replies and connection trouble are retried with capped exponential backoff (plus jitter) up
to `max_attempts`; 5xx replies fail the row at once, keeping the server's reply as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge.clock import Clock, system_clock
from mailbridge.errors import StorageUnavailable
from mailbridge.outbound import writer
from mailbridge.outbound.claim import Claim, Job, Result
from mailbridge.outbound.config import OutboundConfig
from mailbridge.outbound.notices import Notices
from mailbridge.outbound.smarthost import Relay, SmarthostConfig
from mailbridge.outbound.webhooks import KIND as WEBHOOK
from mailbridge.outbound.webhooks import Poster
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings, Webhook
    from mailbridge.storage import Session, Store
    from mailbridge.storage.models import Outbox

log = logging.getLogger("mailbridge.sender")

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=2)
JITTER = 0.1  # up to +10%, so rows that failed together do not retry in lockstep
BATCH_SIZE = 20
POLL_INTERVAL = 1.0  # seconds between looks at the outbox when nobody kicks us
# a claim lives this long unless renewed; the heartbeat renews it three times per lease
LEASE = timedelta(seconds=60)


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """Delay before attempt `attempts + 1`: 1, 2, 4, ... minutes, capped at 2 hours, + jitter."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    return delay * (1 + JITTER * rng())


def log_delivery(
    pk: int, kind: str, attempts: int, outcome: str, result: Result, retry_at: datetime
) -> None:
    if outcome == "sent" and result.refused:
        log.warning("outbox #%s: sent, but refused for %s", pk, "; ".join(result.refused))
    elif outcome == "sent":
        log.info("outbox #%s (%s): sent", pk, kind)
    elif outcome == "retry":
        log.warning(
            "outbox #%s: attempt %d failed, retry at %s: %s", pk, attempts, retry_at, result.error
        )
    else:
        log.error(
            "outbox #%s (%s) failed after %d attempt(s): %s", pk, kind, attempts, result.error
        )


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """What the sender reads from the settings, built once per (re)load and swapped whole."""

    smarthost: SmarthostConfig
    max_attempts: int
    webhooks: tuple[Webhook, ...]
    notices: OutboundConfig  # for the notice that a relayed reply was never delivered

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderConfig:
        return cls(
            smarthost=SmarthostConfig.from_settings(settings),
            max_attempts=settings.outbound.max_attempts,
            webhooks=tuple(settings.webhooks),
            notices=OutboundConfig.from_settings(settings),
        )


class OutboxSender:
    """The outbox component of `mailbridge run`; `deliver_due` is the same work, synchronously."""

    name = "outbox"

    def __init__(
        self,
        store: Store,
        config: SenderConfig,
        clock: Clock | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        poll_interval: float = POLL_INTERVAL,
        batch_size: int = BATCH_SIZE,
        rng: Callable[[], float] = random.random,
        on_delivery: Callable[[str], None] | None = None,
        on_webhook: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or system_clock
        self.tls_context = tls_context  # tests pass one that trusts their own certificate
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.rng = rng
        self.on_delivery = on_delivery  # metrics: "sent", "retry" or "failed" per attempt
        self.on_webhook = on_webhook  # the same, for webhook posts
        self.poster: Poster | None = None
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # results the smarthost gave that could not be committed yet: recorded before anything
        # else, and never sent again by this sender
        self._unrecorded: dict[int, tuple[Job, Result]] = {}
        self._configure(config)

    def reload(self, settings: Settings) -> None:
        self._configure(SenderConfig.from_settings(settings))

    def _configure(self, config: SenderConfig) -> None:
        self.config = config
        self.notices = Notices(config.notices)
        self.lease = LEASE
        if config.webhooks or self.poster is not None:
            self.poster = self.poster or Poster(config.webhooks)
            self.poster.configure(config.webhooks)
            # a post must end well inside the lease even if the heartbeat stalls
            self.lease = max(self.lease, timedelta(seconds=2 * self.poster.worst))
        if config.smarthost.auth_in_clear:
            log.warning("outbound AUTH without TLS: the password would cross the network in clear")

    # --- the component -----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-sender")

    async def stop(self) -> None:
        self._stopping.set()
        self.kick()
        if self._task is None:
            return
        # an SMTP exchange in progress is bounded by the timeout; the rest of its batch is released
        grace = self.config.smarthost.timeout * 4 + 5
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def kick(self) -> None:
        """Look at the outbox now (something was queued); safe from any thread. The daemon kicks
        after every stored mail: a kick while one is pending, or while there is nothing this
        sender could deliver (no smarthost, no webhooks), would only wake the loop (a write to
        its self-pipe) for nothing."""
        wake = self._wake
        if self._loop is None or wake is None or self._loop.is_closed() or wake.is_set():
            return
        if not self.config.smarthost.host and not self.config.webhooks:
            return
        self._loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.deliver_due)
            except StorageUnavailable as exc:
                log.warning("outbox: database unavailable: %s", exc)
            except Exception:
                log.exception("outbox: delivery round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    # --- one round ---------------------------------------------------------------------

    def deliver_due(self, now: datetime | None = None) -> int:
        """Deliver every row due at `now` (default: the clock); returns how many were sent."""
        # outbound off: mail waits in the outbox until a smarthost is configured; webhooks go
        only = None if self.config.smarthost.host else WEBHOOK
        if only and not self.config.webhooks:
            return 0
        sent = self._record_unrecorded(now)
        while not self._stopping.is_set():
            claim = self.claim(now, only)
            if claim is None:
                break
            jobs, unwritten = claim.jobs, claim.unwritten
            with claim:
                if unwritten:  # a database error here ends the round: nothing was sent yet
                    jobs = writer.write_all(self.store, jobs, unwritten)
                with Relay(self.config.smarthost, self._context) as relay:
                    mail = [j for j in jobs if j.kind != WEBHOOK]
                    sent += self._attempt_each(mail, now, claim, relay.send, stop_first=False)
                hooks = [j for j in jobs if j.kind == WEBHOOK]
                sent += self._attempt_each(hooks, now, claim, self._post, stop_first=True)
            if len(jobs) < self.batch_size:
                break
        return sent

    def claim(self, now: datetime | None = None, only: str | None = None) -> Claim | None:
        """Claim the due rows of one batch (committed before any SMTP traffic); None: none due."""
        at = now or self.clock()
        with self.store.unit() as session:
            rows = repo.claim_outbox(session, at, self.lease, self.batch_size, only)
            jobs = [
                Job(
                    r.id,
                    r.kind,
                    r.mail_from,
                    tuple(r.rcpt_tos.split(",")),
                    r.raw,
                    r.attempts,
                    r.rcpt_key if r.kind == WEBHOOK else "",
                )
                for r in rows
            ]
            unwritten = writer.unwritten(session, rows)
        if not jobs:
            return None
        return Claim(self, at + self.lease, jobs, unwritten)

    def _record_unrecorded(self, now: datetime | None) -> int:
        """Record the results whose commit failed before; raises while the database is away."""
        sent = 0
        for pk, (job, result) in list(self._unrecorded.items()):
            self._record(job, result, now)
            del self._unrecorded[pk]
            sent += result.sent
        return sent

    def _attempt_each(
        self,
        jobs: list[Job],
        now: datetime | None,
        claim: Claim,
        attempt: Callable[[Job], Result],
        stop_first: bool,
    ) -> int:
        """Attempt and record each job while the claim on it is surely ours; a stop hands the
        rest back (`stop_first`: the batch's first job too, else only those after it)."""
        sent = 0
        for index, job in enumerate(jobs):
            if job.id in self._unrecorded or not claim.holds(job.id):
                continue  # sent already, or no longer surely ours: never twice from here
            if (index or stop_first) and self._stopping.is_set():
                self._release([j for j in jobs[index:] if claim.holds(j.id)], now)
                break
            result = attempt(job)
            self._record_or_keep(job, result, now, claim)
            sent += result.sent
        return sent

    def _record_or_keep(self, job: Job, result: Result, now: datetime | None, claim: Claim) -> None:
        """Record an attempt; when that commit fails, keep the result (recorded before anything
        else is claimed, never attempted again by us) and let the rest of the batch wait for
        its lease."""
        try:
            self._record(job, result, now)
        except Exception:
            self._unrecorded[job.id] = (job, result)
            raise
        finally:
            claim.done(job.id)

    def _post(self, job: Job) -> Result:
        """One webhook row: one POST (see `webhooks.py`)."""
        if self.poster is None or job.raw is None:
            return Result(False, "no webhook is configured", permanent=True)
        posted = self.poster.post(job.mail_from, job.raw, job.delivery_id)
        return Result(posted.sent, posted.error, posted.permanent)

    def _context(self) -> ssl.SSLContext:
        """The TLS context: the one given, else the default, built once (it reads the CA store)."""
        if self.tls_context is None:
            self.tls_context = ssl.create_default_context()
        return self.tls_context

    # --- bookkeeping -------------------------------------------------------------------

    def _record(self, job: Job, result: Result, now: datetime | None) -> None:
        at = now or self.clock()
        if result.sent:
            self._record_sent(job, result, at)
            return
        with self.store.unit() as session:
            row = repo.get_outbox(session, job.id)
            if row is None:  # purged with its ticket meanwhile
                return
            if row.state != "queued" or row.attempts != job.attempts:
                return  # recorded already: the commit that seemed to fail had gone through
            outcome = self._apply(session, row, result, at)
        log_delivery(row.id, row.kind, row.attempts, outcome, result, row.next_attempt_at)
        report = self.on_webhook if row.kind == WEBHOOK else self.on_delivery
        if report:
            report(outcome)

    def _record_sent(self, job: Job, result: Result, at: datetime) -> None:
        """`_record` of a delivery: one statement, where most rows end (the bytes are dropped,
        the ticket's copy is what remains of them)."""
        partly = ("partly refused: " + "; ".join(result.refused))[:2000] if result.refused else None
        with self.store.unit() as session:
            row = repo.mark_sent(session, job.id, job.attempts, at, partly)
        # None: purged with its ticket, or recorded already (a commit that seemed to fail)
        if row is None:
            return
        kind, attempts, retry_at = row
        log_delivery(job.id, kind, attempts, "sent", result, retry_at)
        report = self.on_webhook if kind == WEBHOOK else self.on_delivery
        if report:
            report("sent")

    def _apply(self, session: Session, row: Outbox, result: Result, at: datetime) -> str:
        """Write a failed attempt's result onto its row: "retry" or "failed"."""
        row.attempts += 1
        row.last_error = result.error
        if result.permanent or row.attempts >= self.config.max_attempts:
            row.state = "failed"
            if row.kind != WEBHOOK:  # a failed post is no news to the customer's thread
                self._failed(session, row, result.error or "", at)
            return "failed"
        row.next_attempt_at = at + backoff(row.attempts, self.rng)
        return "retry"

    def _failed(self, session: Session, row: Outbox, error: str, at: datetime) -> None:
        """Leave the failure on the ticket, where `ticket show` explains it, and tell the agents."""
        if row.ticket_number is None:
            return
        record = lifecycle.Record(
            at,
            lifecycle.Note.DELIVERY_FAILED,
            "outbox",
            None,
            None,
            f"{row.kind} to {row.rcpt_tos}: {error}"[:2000],
        )
        repo.add_events(session, row.ticket_number, [record], row.message_pk)
        ticket = repo.get_ticket(session, row.ticket_number)
        if ticket is not None:
            self.notices.delivery_failed(session, ticket, row, error, at)

    def _release(self, jobs: list[Job], now: datetime | None) -> None:
        """Hand unsent rows of a batch back at once instead of leaving them to the lease."""
        at = now or self.clock()
        with self.store.unit() as session:
            for job in jobs:
                row = repo.get_outbox(session, job.id)
                if row is not None and row.state == "queued":
                    row.next_attempt_at = at
