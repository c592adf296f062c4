"""Mail rather than tickets: `message raw`, `quarantine list|show|retry`, `outbox list|show|retry`."""

from __future__ import annotations

import contextlib
import sys

import click

from mailbridge.cli.context import Ctx, actor, fail, handled, pass_ctx
from mailbridge.cli.output import (
    emit_json,
    outbox_fields,
    outbox_line,
    outbox_view,
    quarantine_fields,
    quarantine_line,
)
from mailbridge.errors import NotFound, Refused


@click.group()
def message() -> None:
    """Stored messages."""


@message.command("raw")
@click.argument("pk", metavar="ID", type=int)
@pass_ctx
@handled
def message_raw(ctx: Ctx, pk: int) -> None:
    """The stored raw bytes, byte for byte."""
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        m = repo.get_message(session, pk, with_raw=True)
        if m is None:
            raise NotFound(f"no message {pk}")
        if not m.raw and m.direction == "outbound":
            raise Refused(
                f"message {pk} is queued in the outbox: its bytes are written when it is sent"
            )
        raw = m.raw
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()


@click.group()
def quarantine() -> None:
    """Messages that could not be put on a ticket."""


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True, help="include ignored and released entries")
@click.option("--json", "as_json", is_flag=True, help="a JSON array")
@pass_ctx
@handled
def quarantine_list(ctx: Ctx, show_all: bool, as_json: bool) -> None:
    """Held messages: id, time, kind, state, sender, reason."""
    from mailbridge import views
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        rows = [views.quarantine_view(q) for q in repo.list_quarantine(session, show_all, show_all)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(quarantine_line(r))
    if not rows:
        click.echo("quarantine is empty")


@quarantine.command("show")
@click.argument("pk", metavar="ID", type=int)
@pass_ctx
@handled
def quarantine_show(ctx: Ctx, pk: int) -> None:
    """One entry: where it came from, why it is held, and the error's detail."""
    from mailbridge import views
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        q = repo.get_quarantine(session, pk)
        if q is None:
            raise NotFound(f"no quarantine entry {pk}")
        data = views.quarantine_view(q)
        detail = q.detail
    for line in quarantine_fields(data):
        click.echo(line)
    if detail:
        click.echo("\n" + detail.rstrip())


@quarantine.command("retry")
@click.argument("pks", metavar="ID...", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="every held entry (see --reason)")
@click.option(
    "--reason",
    metavar="R",
    help="with --all: only entries whose reason starts with R (e.g. flood)",
)
@pass_ctx
@handled
def quarantine_retry(ctx: Ctx, pks: tuple[int, ...], retry_all: bool, reason: str | None) -> None:
    """Run held messages through the pipeline again (exit 1 if any stays quarantined)."""
    from mailbridge.actions import retry_quarantined
    from mailbridge.parse_pool import ParsePool
    from mailbridge.storage import repo

    if bool(pks) == retry_all:
        fail("give quarantine IDs or --all, not both", 2)
    if reason is not None and not retry_all:
        fail("--reason selects entries for --all", 2)
    app = ctx.app  # built once: releasing a flood of 200 entries is one process, not 200
    if retry_all:
        with app.store.unit() as session:
            pks = tuple(
                q.id
                for q in repo.list_quarantine(session, False, False)
                if reason is None or q.reason.startswith(reason)
            )
    counts: dict[str, int] = {}
    # a mail held for "parse timeout" must not hang the command: large mail parses on a worker
    parser = ParsePool.from_settings(app.settings) if pks else None
    with parser or contextlib.nullcontext():
        if parser is not None:
            app.ingestor.parser = parser
        for pk in pks:
            try:
                outcome = retry_quarantined(app.store, app.ingestor, pk)
            except (NotFound, Refused) as exc:
                click.echo(f"mailbridge: {exc}", err=True)
                counts["refused"] = counts.get("refused", 0) + 1
                continue
            counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
            where = f" ticket #{outcome.ticket}" if outcome.ticket else ""
            click.echo(f"quarantine {pk}: {outcome.outcome}{where} ({outcome.reason})")
    if retry_all or len(pks) > 1:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing held"
        click.echo(f"retried: {summary}", err=True)
    if counts.get("quarantined") or counts.get("refused"):
        sys.exit(1)


@click.group()
def outbox() -> None:
    """Outgoing mail: acknowledgements, notifications and relayed replies."""


@outbox.command("list")
@click.option("--failed", is_flag=True, help="only mail that was given up on")
@click.option("--json", "as_json", is_flag=True, help="a JSON array")
@pass_ctx
@handled
def outbox_list(ctx: Ctx, failed: bool, as_json: bool) -> None:
    """Outbox rows: id, state, kind, ticket, attempts, recipients, last error."""
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        rows = [outbox_view(r) for r in repo.list_outbox(session, "failed" if failed else None)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(outbox_line(r))
    if not rows:
        click.echo("no failed mail in the outbox" if failed else "the outbox is empty")


@outbox.command("show")
@click.argument("pk", metavar="ID", type=int)
@pass_ctx
@handled
def outbox_show(ctx: Ctx, pk: int) -> None:
    """One outbox row, with the smarthost's last reply."""
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        row = repo.get_outbox(session, pk)
        if row is None:
            raise NotFound(f"no outbox entry {pk}")
        data = outbox_view(row)
    for line in outbox_fields(data):
        click.echo(line)


@outbox.command("retry")
@click.argument("pks", metavar="ID...", nargs=-1, type=int, required=True)
@pass_ctx
@handled
def outbox_retry(ctx: Ctx, pks: tuple[int, ...]) -> None:
    """Make failed (or waiting) mail due now; the running daemon sends it (exit 1 if any is refused)."""
    from mailbridge.actions import retry_outbox

    refused = False
    for pk in pks:
        try:
            click.echo(retry_outbox(ctx.app.store, pk, actor(), ctx.app.clock()))
        except (NotFound, Refused) as exc:
            click.echo(f"mailbridge: {exc}", err=True)
            refused = True
    if refused:
        sys.exit(1)
