"""Group commit: the messages that arrive while one commit runs share the next one.

A thin adapter between the SMTP sessions (one coroutine each) and `Ingestor.accept_each`
(blocking, in a thread), which owns the failure ladder for a batch that cannot commit as a whole.
"""

from __future__ import annotations

import asyncio

from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.ingest import Ingestor
from mailbridge.parse_pool import ParsePool, ParseResult

DRAIN_POLL = 0.05
MAX_BATCH = 32  # messages per group commit: bounds the wait of the first in a batch


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
        self.pending: list[
            tuple[bytes, Envelope, Source, ParseResult | None, asyncio.Future[Outcome]]
        ] = []
        self.in_flight = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Commit what is queued, then end the workers."""
        while self.pending or self.in_flight:
            await asyncio.sleep(DRAIN_POLL)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, raw: bytes, envelope: Envelope, source: Source) -> Outcome:
        """The outcome once committed; raises StorageUnavailable if the bytes could not be stored."""
        # parsed by a worker process before it queues, so a slow parse holds neither the event
        # loop nor the commit of other mail (small mail is parsed in the commit thread)
        parsed = await self.parser.parse_async(raw) if self.parser else None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((raw, envelope, source, parsed, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            if not self.pending:
                self._wakeup.clear()
            if not batch:
                continue
            self.in_flight += 1
            try:
                results = await asyncio.to_thread(self._commit, [item[:4] for item in batch])
            finally:
                self.in_flight -= 1
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away; its mail is stored all the same
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _commit(
        self, items: list[tuple[bytes, Envelope, Source, ParseResult | None]]
    ) -> list[Outcome | Exception]:
        return self.ingestor.accept_each([i[:3] for i in items], [i[3] for i in items])
