"""Group commit: the messages that arrive while one commit runs share the next one.

A thin adapter between the SMTP sessions (one coroutine each) and `Ingestor.accept_each`
(blocking, in a committer thread), which owns the failure ladder for a batch that cannot commit
as a whole.

Each committer is a thread of its own that takes its next batch from a queue the moment its
commit returns. When the event loop formed the batches instead (the first version: a coroutine
per committer, each commit an `asyncio.to_thread`), the committer sat idle after every commit
until the loop got round to the result, behind the replies and reads of every other session
(0.3 ms at the median, up to 5 ms under load on 2 cores); now the loop only queues mail and
sets the replies' futures, once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading

from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.ingest import Ingestor
from mailbridge.parse_pool import ParsePool, ParseResult

log = logging.getLogger("mailbridge.smtp")

DRAIN_POLL = 0.05
MAX_BATCH = 32  # messages per group commit: bounds the wait of the first in a batch

Item = tuple[bytes, Envelope, Source, ParseResult | None, asyncio.Future[Outcome]]
Results = list[Outcome | Exception]
_STOP = None  # put once per committer: it ends after the batches before it


class GroupCommit:
    """Hands messages to `Ingestor.accept_each` in batches: one commit for all that arrived together.

    Zero added latency: a batch is whatever queued while the previous commit ran, so a lone message
    goes straight through, and under load a commit (and on SQLite the single write lock) is shared.
    Each message's reply still waits for the commit that holds it. `workers` batches commit at
    once: 1 for SQLite, whose writers queue on one lock anyway (several threads would only sleep in
    its busy handler), more for PostgreSQL.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        workers: int = 1,
        max_batch: int = MAX_BATCH,
        parser: ParsePool | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.workers = max(1, workers)
        self.max_batch = max_batch
        self.parser = parser
        self.queued: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self.unanswered = 0  # submitted, reply not yet set: what stop() waits for
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._run, name=f"mailbridge-commit-{n}", daemon=True)
            for n in range(1, self.workers + 1)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then end the committers."""
        while self.unanswered:
            await asyncio.sleep(DRAIN_POLL)
        for _ in self._threads:
            self.queued.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []

    async def submit(self, raw: bytes, envelope: Envelope, source: Source) -> Outcome:
        """The outcome once committed; raises StorageUnavailable if the bytes could not be stored."""
        # parsed by a worker process before it queues, so a slow parse holds neither the event
        # loop nor the commit of other mail (small mail is parsed in the commit thread)
        parsed = await self.parser.parse_async(raw) if self.parser else None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.unanswered += 1
        self.queued.put((raw, envelope, source, parsed, future))
        return await future

    # --- the committer threads ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self.queued.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self.queued.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True  # after this batch: every submit before stop() is in it
                    break
                batch.append(item)
            self._answer(batch, self._commit(batch))
            if stop:
                return

    def _commit(self, batch: list[Item]) -> Results:
        try:
            return self.ingestor.accept_each(
                [(raw, envelope, source) for raw, envelope, source, _, _ in batch],
                [parsed for _, _, _, parsed, _ in batch],
            )
        except Exception as exc:  # accept_each answers per message; this is a bug, not storage
            log.exception("group commit failed unexpectedly")
            return [exc] * len(batch)

    def _answer(self, batch: list[Item], results: Results) -> None:
        loop = self._loop
        assert loop is not None
        # RuntimeError: the loop is gone (stopped without stop()), nobody awaits these replies
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._resolve, batch, results)  # one wake-up per batch

    def _resolve(self, batch: list[Item], results: Results) -> None:
        self.unanswered -= len(batch)
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # the client went away; its mail is stored all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
