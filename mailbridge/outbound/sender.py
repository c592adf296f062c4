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

Queued mail arrives without its bytes (see `outbound.py`): after claiming a batch the sender writes
the MIME bytes of such rows from their spec, outside any transaction, and stores them on the row
and on the ticket's outbound copy in one short transaction before the first attempt; a retry sends
the same bytes again.

4xx replies and connection trouble are retried with capped exponential backoff (plus jitter) up
to `max_attempts`; 5xx replies fail the row at once, keeping the server's reply as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from mailbridge import lifecycle
from mailbridge.clock import Clock, system_clock
from mailbridge.errors import DeliveryError, StorageUnavailable
from mailbridge.fingerprint import content_hash, dedup_key
from mailbridge.outbound.compose import Pending, Written, attachments_of, size_of, write
from mailbridge.outbound.decide import Outbound
from mailbridge.outbound.webhooks import KIND as WEBHOOK
from mailbridge.outbound.webhooks import Poster
from mailbridge.storage import repo
from mailbridge.storage.models import Attachment

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.storage import Store

log = logging.getLogger("mailbridge.outbound.sender")

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=2)
JITTER = 0.1  # up to +10%, so rows that failed together do not retry in lockstep
BATCH_SIZE = 20
POLL_INTERVAL = 1.0  # seconds between looks at the outbox when nobody kicks us
# a claim lives this long unless renewed; the heartbeat renews it three times per lease
LEASE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed row, detached from its session: what one delivery needs."""

    id: int
    kind: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes | None  # None: the mail could not be written
    attempts: int = 0  # as claimed: a result is recorded only onto the attempt it belongs to
    delivery_id: str = ""  # webhooks: the id receivers de-duplicate by


@dataclass(frozen=True, slots=True)
class Unwritten:
    """A claimed row still without bytes, and what writing them needs from the database."""

    pending: Pending | None  # None: the spec cannot be read
    message_pk: int | None
    known: list[str]  # the ticket's Message-IDs when the mail was queued (its References)
    attach_raw: bytes | None  # the stored mail whose attachments go along


@dataclass(frozen=True, slots=True)
class Result:
    sent: bool
    error: str | None = None
    permanent: bool = False
    refused: tuple[str, ...] = ()  # recipients refused while others accepted


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """Delay before attempt `attempts + 1`: 1, 2, 4, ... minutes, capped at 2 hours, + jitter."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    return delay * (1 + JITTER * rng())


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"[:1000]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


class Claim:
    """Rows this sender claimed and has not recorded yet; `renew` keeps them ours."""

    def __init__(
        self,
        sender: OutboxSender,
        stamp: datetime,
        jobs: list[Job],
        unwritten: dict[int, Unwritten],
    ) -> None:
        self.sender = sender
        self.jobs, self.unwritten = jobs, unwritten
        self.ids = {j.id for j in jobs}
        self.stamp = stamp  # their next_attempt_at: whoever holds the rows under this stamp
        self.renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> None:
        """Push the lease of the rows still being sent one `LEASE` past now."""
        until = self.sender.clock() + self.sender.lease
        with self.sender.store.unit() as session:
            kept = repo.renew_outbox(session, sorted(self.ids), self.stamp, until)
        lost = self.ids - kept
        if lost:
            log.warning("outbox: claim of %s ran out; another sender has them", sorted(lost))
        self.ids &= kept
        self.stamp, self.renewed = until, time.monotonic()

    def holds(self, pk: int) -> bool:
        """Whether `pk` may still be sent by us: claimed, not lost, and the lease renewed
        recently enough that no other sender can have taken it yet."""
        fresh = time.monotonic() - self.renewed < self.sender.lease.total_seconds() / 2
        return fresh and pk in self.ids

    def done(self, pk: int) -> None:
        self.ids.discard(pk)

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, name="outbox-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        interval = self.sender.lease.total_seconds() / 3
        while not self._stop.wait(interval):
            if not self.ids:
                continue
            try:
                self.renew()
            except Exception as exc:  # the database is away: holds() stops sending in time
                log.warning("outbox: cannot renew the claim: %s", exc)


_BODY_FIELDS = (b"content-type:", b"content-transfer-encoding:", b"mime-version:")


def reference_copy(written: Written, original: str | None) -> tuple[bytes, str]:
    """What the ticket keeps of a notification: its header block as sent, byte for byte, and
    instead of the customer's text and attachments (stored once, with the customer's mail) a
    line saying where they are. The bytes sent are kept on the outbox row until delivery."""
    head, _, _ = written.raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if not f.lower().startswith(_BODY_FIELDS)]
    names = ", ".join(p.filename for p in written.attachments)
    text = (
        f"This notification carried the text of message <{original}>"
        + (f" and its attachments ({names})" if names else "")
        + ", stored with that message on this ticket; they are not stored again here.\n"
    )
    mime = [
        b"MIME-Version: 1.0",
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: 8bit",
    ]
    body = text.encode("utf-8", "replace").replace(b"\n", b"\r\n")
    return b"\r\n".join([*kept, *mime]) + b"\r\n\r\n" + body, text


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


class OutboxSender:
    """The outbox component of `mailbridge run`; `deliver_due` is the same work, synchronously."""

    name = "outbox"

    def __init__(
        self,
        store: Store | App,
        settings: Any,
        clock: Clock | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        poll_interval: float = POLL_INTERVAL,
        batch_size: int = BATCH_SIZE,
        rng: Callable[[], float] = random.random,
        on_delivery: Callable[[str], None] | None = None,
        on_webhook: Callable[[str], None] | None = None,
    ) -> None:
        # the daemon hands over its App; tests and one-shot commands a bare Store
        self.store = cast("Store", getattr(store, "store", store))
        self.clock = clock or cast(Clock, getattr(store, "clock", system_clock))
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
        self.lease = LEASE
        self.reload(settings)

    def reload(self, settings: Any) -> None:
        self.settings = settings
        self.outbound = Outbound(settings, self.clock)
        # smtplib would say EHLO [127.0.0.1] when the host's name has no dot: name ourselves
        self.helo_name = settings.smtp.hostname or socket.getfqdn()
        self.lease = LEASE
        if settings.webhooks or self.poster is not None:
            self.poster = self.poster or Poster(settings.webhooks)
            self.poster.configure(settings.webhooks)
            # a post must end well inside the lease even if the heartbeat stalls
            self.lease = max(self.lease, timedelta(seconds=2 * self.poster.worst))
        out = settings.outbound
        if (
            out.username
            and not out.starttls
            and out.port != 465
            and not _is_loopback(out.smarthost or "")
        ):
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
        grace = self.settings.outbound.timeout.total_seconds() * 4 + 5
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def kick(self) -> None:
        """Look at the outbox now (something was queued); safe from any thread."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

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
        only = None if self.settings.outbound.smarthost else WEBHOOK
        if only and not self.settings.webhooks:
            return 0
        sent = self._record_unrecorded(now)
        while not self._stopping.is_set():
            claim = self.claim(now, only)
            if claim is None:
                break
            jobs, unwritten = claim.jobs, claim.unwritten
            with claim:
                if unwritten:  # a database error here ends the round: nothing was sent yet
                    jobs = self._write(jobs, unwritten)
                sent += self._deliver_batch([j for j in jobs if j.kind != WEBHOOK], now, claim)
                sent += self._post_batch([j for j in jobs if j.kind == WEBHOOK], now, claim)
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
            unwritten = self._unwritten(session, rows)
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

    def _unwritten(self, session: Any, rows: list[Any]) -> dict[int, Unwritten]:
        """For claimed rows without bytes: their spec, References and attachment source."""
        specs = repo.outbox_specs(session, [r.id for r in rows if r.raw is None])
        found: dict[int, Unwritten] = {}
        for row in rows:
            if row.id not in specs:
                continue
            try:
                pending: Pending | None = Pending.from_json(specs[row.id])
            except (ValueError, TypeError, KeyError):
                log.exception("outbox #%s: unreadable spec", row.id)
                pending = None
            known: list[str] = []
            if row.message_pk is not None and row.ticket_number is not None:
                known = repo.message_ids_before(session, row.ticket_number, row.message_pk)
            found[row.id] = Unwritten(pending, row.message_pk, known, None)
        sources = repo.raw_of_messages(
            session,
            [u.pending.attach_pk for u in found.values() if u.pending and u.pending.attach_pk],
        )
        return {
            pk: replace(u, attach_raw=sources.get(u.pending.attach_pk))
            if u.pending and u.pending.attach_pk
            else u
            for pk, u in found.items()
        }

    def _write(self, jobs: list[Job], unwritten: dict[int, Unwritten]) -> list[Job]:
        """Write the mails of `unwritten` (no transaction open), then store them in one."""
        written: dict[int, Written | None] = {}
        for pk, u in unwritten.items():
            parts = attachments_of(u.attach_raw) if u.attach_raw else []
            written[pk] = write(u.pending, u.known, parts) if u.pending else None
        saved = []
        for pk, w in written.items():
            u = unwritten[pk]
            if w is None or u.pending is None:
                continue
            chash = content_hash(w.raw)
            copy_raw, body = w.raw, w.body
            if u.pending.kind == "notify" and u.attach_raw is not None:
                # the customer's mail, text and attachments, is on the ticket already
                copy_raw, body = reference_copy(w, u.pending.in_reply_to)
            copy = {
                "dedup_key": dedup_key(u.pending.message_id, chash),
                "content_hash": chash,
                "size": len(copy_raw),
                "subject": w.subject,
                "body_text": body,
            }
            files = [
                Attachment(filename=p.filename, content_type=p.content_type, size=size_of(p))
                for p in w.attachments
            ]
            saved.append(repo.Written(pk, w.raw, u.message_pk, copy, files, copy_raw))
        with self.store.unit() as session:
            repo.save_written(session, saved)
        return [
            replace(job, raw=w.raw if (w := written[job.id]) else None)
            if job.id in written
            else job
            for job in jobs
        ]

    def _deliver_batch(self, jobs: list[Job], now: datetime | None, claim: Claim) -> int:
        """One connection for the batch; reconnect after any error, since its state is unknown."""
        sent = 0
        conn: smtplib.SMTP | None = None
        connect_error: Result | None = None
        try:
            for index, job in enumerate(jobs):
                if job.id in self._unrecorded or not claim.holds(job.id):
                    continue  # sent already, or no longer surely ours: never twice from here
                if index and self._stopping.is_set():
                    self._release([j for j in jobs[index:] if claim.holds(j.id)], now)
                    break
                if job.raw is None:
                    result = Result(False, "the mail could not be written", permanent=True)
                elif connect_error is not None:
                    result = connect_error  # the smarthost is unreachable: do not hammer it
                else:
                    try:
                        conn = conn or self._connect()
                        result = self._send(conn, job)
                    except DeliveryError as exc:
                        result = Result(False, str(exc), exc.permanent)
                        if conn is None:
                            connect_error = result
                    if not result.sent:
                        conn = self._close(conn)
                self._record_or_keep(job, result, now, claim)
                sent += result.sent
        finally:
            self._close(conn, polite=True)
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

    def _post_batch(self, jobs: list[Job], now: datetime | None, claim: Claim) -> int:
        """Webhook rows: one POST each (see `webhooks.py`), only while the claim is surely ours."""
        sent = 0
        for index, job in enumerate(jobs):
            if job.id in self._unrecorded or not claim.holds(job.id):
                continue  # posted already, or no longer surely ours: never twice from here
            if self._stopping.is_set():
                self._release([j for j in jobs[index:] if claim.holds(j.id)], now)
                break
            if self.poster is None or job.raw is None:
                result = Result(False, "no webhook is configured", permanent=True)
            else:
                posted = self.poster.post(job.mail_from, job.raw, job.delivery_id)
                result = Result(posted.sent, posted.error, posted.permanent)
            self._record_or_keep(job, result, now, claim)
            sent += result.sent
        return sent

    # --- SMTP --------------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH as configured; any failure is temporary for the mail."""
        out = self.settings.outbound
        timeout = out.timeout.total_seconds()
        context = self._context() if out.starttls or out.port == 465 else None
        try:
            if out.port == 465 and not out.starttls:  # submissions: TLS from the first byte
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    out.smarthost,
                    out.port,
                    local_hostname=self.helo_name,
                    timeout=timeout,
                    context=context,
                )
            else:
                conn = smtplib.SMTP(
                    out.smarthost, out.port, local_hostname=self.helo_name, timeout=timeout
                )
            conn.ehlo()
            if out.starttls:
                conn.starttls(context=context)
                conn.ehlo()
            if out.username:
                conn.login(out.username, out.password.get() if out.password else "")
            return conn
        except smtplib.SMTPResponseException as exc:
            # a refusal before any message (421 busy, 535 bad password) says nothing about the mail
            raise DeliveryError(
                f"smarthost: {_reply(exc.smtp_code, exc.smtp_error)}", permanent=False
            ) from exc
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(
                f"smarthost {out.smarthost}:{out.port}: {exc.__class__.__name__}: {exc}",
                permanent=False,
            ) from exc

    def _context(self) -> ssl.SSLContext:
        """The TLS context: the one given, else the default, built once (it reads the CA store)."""
        if self.tls_context is None:
            self.tls_context = ssl.create_default_context()
        return self.tls_context

    def _send(self, conn: smtplib.SMTP, job: Job) -> Result:
        assert job.raw is not None
        # 8-bit content (a forwarded message/rfc822, say) needs BODY=8BITMIME where offered
        options = ["BODY=8BITMIME"] if not job.raw.isascii() and conn.has_extn("8bitmime") else []
        utf8 = [r for r in job.rcpt_tos if not r.isascii()]
        if utf8 and not conn.has_extn("smtputf8"):
            # a retry would not make the smarthost offer it: fail now, so the agent hears why
            return Result(
                False,
                f"not deliverable: {', '.join(utf8)} needs SMTPUTF8, "
                "which the smarthost does not offer",
                permanent=True,
            )
        if utf8:
            options.append("SMTPUTF8")
        try:
            refused = conn.sendmail(
                job.mail_from, list(job.rcpt_tos), job.raw, mail_options=options
            )
        except smtplib.SMTPRecipientsRefused as exc:
            replies = [_reply(code, text) for code, text in exc.recipients.values()]
            permanent = all(code >= 500 for code, _ in exc.recipients.values())
            return Result(
                False,
                "; ".join(f"{r}: {m}" for r, m in zip(exc.recipients, replies, strict=True)),
                permanent,
            )
        except smtplib.SMTPResponseException as exc:
            return Result(False, _reply(exc.smtp_code, exc.smtp_error), exc.smtp_code >= 500)
        except (smtplib.SMTPException, OSError) as exc:
            return Result(False, f"{exc.__class__.__name__}: {exc}")
        notes = tuple(f"{r}: {_reply(code, text)}" for r, (code, text) in refused.items())
        return Result(True, refused=notes)

    @staticmethod
    def _close(conn: smtplib.SMTP | None, polite: bool = False) -> None:
        if conn is None:
            return None
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if polite:
                conn.quit()
            else:
                conn.close()
        return None

    # --- bookkeeping -------------------------------------------------------------------

    def _record(self, job: Job, result: Result, now: datetime | None) -> None:
        at = now or self.clock()
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

    def _apply(self, session: Any, row: Any, result: Result, at: datetime) -> str:
        """Write one attempt's result onto its row: "sent", "retry" or "failed"."""
        row.attempts += 1
        if result.sent:
            row.state, row.sent_at = "sent", at
            row.raw = None  # sent: the ticket's copy is what remains of it
            partly = "partly refused: " + "; ".join(result.refused)
            row.last_error = partly[:2000] if result.refused else None
            return "sent"
        row.last_error = result.error
        if result.permanent or row.attempts >= self.settings.outbound.max_attempts:
            row.state = "failed"
            if row.kind != WEBHOOK:  # a failed post is no news to the customer's thread
                self._failed(session, row, result.error or "", at)
            return "failed"
        row.next_attempt_at = at + backoff(row.attempts, self.rng)
        return "retry"

    def _failed(self, session: Any, row: Any, error: str, at: datetime) -> None:
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
            self.outbound.delivery_failed(session, ticket, row, error, at)

    def _release(self, jobs: list[Job], now: datetime | None) -> None:
        """Hand unsent rows of a batch back at once instead of leaving them to the lease."""
        at = now or self.clock()
        with self.store.unit() as session:
            for job in jobs:
                row = repo.get_outbox(session, job.id)
                if row is not None and row.state == "queued":
                    row.next_attempt_at = at
