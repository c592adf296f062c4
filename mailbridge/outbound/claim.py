"""What a sender holds between claiming outbox rows and recording their results: the rows as
`Job`s, the lease on them (renewed by a heartbeat), and the `Result` of each attempt."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.outbound.sender import OutboxSender
    from mailbridge.outbound.writer import Unwritten

log = logging.getLogger("mailbridge.sender")


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
class Result:
    sent: bool
    error: str | None = None
    permanent: bool = False
    refused: tuple[str, ...] = ()  # recipients refused while others accepted


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
