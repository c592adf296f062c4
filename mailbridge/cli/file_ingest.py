"""`mailbridge ingest`'s loop: files, mboxes and Maildirs read in batches of
`[database] batch_size`, parsed ahead by worker processes while the previous batch commits,
each outcome counted and shown; a progress bar while a person watches."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.sources.files import Skipped, count_messages, iter_messages

if TYPE_CHECKING:
    from rich.progress import Progress

    from mailbridge.app import App

Item = tuple[bytes, Envelope, Source]


class FileIngest:
    def __init__(self, app: App, as_json: bool, dry_run: bool) -> None:
        self.app = app
        self.as_json = as_json
        self.dry_run = dry_run
        self.unreadable: list[str] = []
        self.skipped: list[str] = []
        self.counts: dict[str, int] = {}

    def run(self, paths: Sequence[Path]) -> bool:
        """Ingest everything under `paths`; False when an input was left unread (SPEC section 5:
        it was not handled)."""
        from mailbridge.parse_pool import ParsePool, parse_ahead

        # worker processes parse the next batch while this one commits; dry runs parse in process
        parser = None if self.dry_run else ParsePool.from_settings(self.app.settings)
        with (
            _Progress(count_messages(list(paths)) if sys.stderr.isatty() else None) as advance,
            parser or contextlib.nullcontext(),
        ):
            for items, results in parse_ahead(parser, self._batches(paths, advance)):
                for outcome in self.app.ingestor.accept_many(items, results):
                    self._report(outcome)
                advance(len(items))
        if not self.as_json:
            summary = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "nothing"
            click.echo(f"{'would ingest' if self.dry_run else 'ingested'}: {summary}", err=True)
        for problem in self.unreadable:
            click.echo(f"mailbridge: cannot read {problem}", err=True)
        return not (self.unreadable or self.skipped)

    def _batches(
        self, paths: Sequence[Path], advance: Callable[[int], None]
    ) -> Iterator[list[Item]]:
        batch_size = max(1, self.app.settings.database.batch_size)
        batch: list[Item] = []
        for raw, label in self._messages(paths):
            source = Source("file", label, live=False)
            if self.dry_run:
                self._report(self.app.ingestor.explain(raw, Envelope(), source))
                advance(1)
                continue
            batch.append((raw, Envelope(), source))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _messages(self, paths: Sequence[Path]) -> Iterator[tuple[bytes, str]]:
        limit = self.app.settings.smtp.max_message_size  # what the listener would refuse
        for path in paths:
            try:
                yield from iter_messages(path, limit, self._skip)
            except OSError as exc:
                self.unreadable.append(f"{path}: {exc.strerror or exc}")

    def _skip(self, exc: Skipped) -> None:
        self.skipped.append(str(exc))
        click.echo(f"mailbridge: skipped {exc}", err=True)

    def _report(self, outcome: Outcome) -> None:
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        if self.as_json:
            click.echo(json.dumps(outcome.as_json(), ensure_ascii=False))
        elif self.dry_run or not sys.stderr.isatty():
            where = f"#{outcome.ticket}" if outcome.ticket else "-"
            click.echo(f"{outcome.source}: {outcome.outcome} {where} ({outcome.reason})")


class _Progress:
    """A progress bar on a terminal, nothing otherwise."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.bar: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.total or self.total < 20:
            return lambda n: None
        from rich.progress import Progress

        bar = self.bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("ingesting", total=self.total)
        return lambda n: bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
