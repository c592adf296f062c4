"""Parsing outside the daemon's process: worker processes with a per-message deadline.

`parse` is pure Python and holds the GIL while it runs; a hostile mail that makes it slow
(issue 14: an encoded-word bomb held the event loop for two minutes) must cost a worker,
never the event loop, the watchdog or the other sessions. `ParsePool` runs `parse_safely` in
worker processes (pebble's `ProcessPool`, which kills a worker whose task overruns its
timeout and starts another): a mail not parsed within `[parse] timeout` comes back as the
failure ``parse timeout``, and ingest quarantines it raw like any unparseable mail. The pool
also parses batches on every core for `mailbridge ingest`.

Mail up to `inline_max_size` bytes is parsed in the calling thread instead: sending it to a
worker and back costs more than parsing it, and at that size even the slowest shapes measured
(quadratic stdlib paths: a uuencode `begin` line repeated, thousands of `@` in Cc) parse in
tens of milliseconds, so no deadline is needed to bound them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pebble import ProcessExpired, ProcessPool

from mailbridge.errors import ParseError
from mailbridge.parse import ParsedMessage, parse

if TYPE_CHECKING:
    from mailbridge.config import Settings

__all__ = [
    "PARSE_TIMEOUT",
    "InlineParser",
    "ParsePool",
    "ParseResult",
    "Parser",
    "parse_ahead",
    "parse_safely",
]

log = logging.getLogger("mailbridge.parse")

PARSE_TIMEOUT = "parse timeout"


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A parsed message, or why there is none (then ingest quarantines the raw bytes)."""

    parsed: ParsedMessage | None
    error: str | None = None


def parse_safely(raw: bytes) -> ParseResult:
    """`parse`, with every failure turned into a reason: a parser bug must not lose the mail."""
    try:
        return ParseResult(parse(raw))
    except ParseError as exc:
        return ParseResult(None, f"unparseable: {exc}")
    except Exception as exc:
        return ParseResult(None, f"parser error: {exc.__class__.__name__}: {exc}")


def parse_chunk(raws: list[bytes]) -> list[ParseResult]:
    return [parse_safely(raw) for raw in raws]


class Parser(Protocol):
    def parse_many(self, raws: Sequence[bytes]) -> list[ParseResult]:
        """Results in the order of `raws`."""


class InlineParser:
    """Parses in the calling thread: for the CLI's one-off commands and `[parse] workers = 0`."""

    def parse_many(self, raws: Sequence[bytes]) -> list[ParseResult]:
        return [parse_safely(raw) for raw in raws]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ParsePool:
    """Worker processes that parse, each message within `timeout` seconds; a daemon Component.

    Thread-safe: the event loop awaits `parse_async`, committer and poller threads call
    `parse_many`, the CLI pipelines batches with `submit`/`collect`.
    """

    name = "parse"

    def __init__(self, workers: int, timeout: float, inline_max_size: int = 0) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self.inline_max_size = inline_max_size
        self._pool: ProcessPool | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, inline: bool = True) -> ParsePool | None:
        """The pool `[parse]` asks for; None for `workers = 0` (parse in process, no deadline)."""
        section = settings.parse
        workers = default_workers() if section.workers is None else section.workers
        if workers == 0:
            return None
        size = section.inline_max_size if inline else 0
        return cls(workers, section.timeout.total_seconds(), size)

    # --- Component -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.open)

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    def reload(self, settings: Settings) -> None:
        """The deadline and the size parsed in process apply at once; `workers` at a restart."""
        section = settings.parse
        self.timeout = section.timeout.total_seconds()
        self.inline_max_size = section.inline_max_size

    # --- use -------------------------------------------------------------------------------

    def open(self) -> ParsePool:
        if self._pool is None:
            # forkserver: workers fork from a clean single-threaded process (forking the
            # daemon, which runs threads, is unsafe), with the parser already imported
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["mailbridge.parse_pool"])
            self._pool = ProcessPool(max_workers=self.workers, context=context)
        return self

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # a task still running is a mail whose sender has not had its reply
            pool.join()

    def __enter__(self) -> ParsePool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def inline(self, raw: bytes) -> bool:
        return len(raw) <= self.inline_max_size or self._pool is None

    def submit(self, raw: bytes) -> Future[Any]:
        """A worker parses `raw`; read the outcome with `collect`."""
        return self._schedule(parse_safely, raw)

    def _schedule(self, function: Any, argument: Any) -> Future[Any]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the parse pool is not open")
        try:
            return pool.schedule(function, (argument,), timeout=self.timeout)
        except RuntimeError:  # the pool broke (its workers died faster than it restarts them)
            log.error("parse pool broken: starting a new one")
            self.close()
            pool = self.open()._pool
            assert pool is not None
            return pool.schedule(function, (argument,), timeout=self.timeout)

    @staticmethod
    def collect(future: Future[Any]) -> ParseResult:
        """The result of a `submit`, waiting for it; a worker killed at the deadline or dead
        for any other reason becomes a failure reason."""
        try:
            result = future.result()
        except TimeoutError:
            return ParseResult(None, PARSE_TIMEOUT)
        except ProcessExpired as exc:
            return ParseResult(None, f"parser error: worker died (exit code {exc.exitcode})")
        except Exception as exc:  # e.g. the pool stopped under it
            return ParseResult(None, f"parser error: {exc.__class__.__name__}: {exc}")
        assert isinstance(result, ParseResult)
        return result

    def parse_many(self, raws: Sequence[bytes]) -> list[ParseResult]:
        """Large mail on the workers, small mail here meanwhile; results in order."""
        futures = {i: self.submit(raw) for i, raw in enumerate(raws) if not self.inline(raw)}
        results = [parse_safely(raw) if i not in futures else None for i, raw in enumerate(raws)]
        return [r if r is not None else self.collect(futures[i]) for i, r in enumerate(results)]

    def submit_batch(self, raws: Sequence[bytes]) -> list[tuple[list[bytes], Future[Any]]]:
        """A whole batch, whatever the sizes, in two chunks per worker: one round trip per
        chunk, not per mail (`mailbridge ingest`); read the outcome with `collect_batch`."""
        size = max(1, -(-len(raws) // (2 * self.workers)))
        chunks = [list(raws[i : i + size]) for i in range(0, len(raws), size)]
        return [(chunk, self._schedule(parse_chunk, chunk)) for chunk in chunks]

    def collect_batch(self, submitted: list[tuple[list[bytes], Future[Any]]]) -> list[ParseResult]:
        """Results in order. A chunk over the deadline as a whole (or whose worker died) is
        parsed again mail by mail, so only a mail that alone overruns it is `parse timeout`."""
        results: list[ParseResult] = []
        for chunk, future in submitted:
            try:
                results.extend(future.result())
            except Exception:
                results.extend(self.collect(f) for f in [self.submit(raw) for raw in chunk])
        return results

    async def parse_async(self, raw: bytes) -> ParseResult | None:
        """The result from a worker, or None for mail small enough to parse in the caller."""
        if self.inline(raw):
            return None
        future = self.submit(raw)
        with contextlib.suppress(Exception):  # collect names it
            await asyncio.wrap_future(future)
        return self.collect(future)


Item = TypeVar("Item", bound=tuple[Any, ...])


def parse_ahead(
    pool: ParsePool | None, batches: Iterable[list[Item]]
) -> Iterator[tuple[list[Item], list[ParseResult] | None]]:
    """Each batch (items whose first element is the raw bytes) with its parse results, in
    order; the workers already parse the next batch while the caller commits this one.
    Without a pool the results are None: ingest parses in process. A single batch is not
    pipelined: its small mail is parsed in process, only its large mail by the workers (which
    start only then), still under the deadline."""
    iterator = iter(batches)
    first, second = next(iterator, None), next(iterator, None)
    if first is None:
        return
    if pool is None:
        for batch in itertools.chain((first,), () if second is None else (second,), iterator):
            yield batch, None
        return
    if second is None:
        yield first, pool.parse_many([item[0] for item in first])
        return
    ahead: tuple[list[Item], list[tuple[list[bytes], Future[Any]]]] | None = None
    for batch in itertools.chain((first, second), iterator):
        submitted = pool.submit_batch([item[0] for item in batch])
        if ahead is not None:
            yield ahead[0], pool.collect_batch(ahead[1])
        ahead = (batch, submitted)
    if ahead is not None:
        yield ahead[0], pool.collect_batch(ahead[1])
