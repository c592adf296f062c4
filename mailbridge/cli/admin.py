"""Running mailbridge: `run`, `check-config`, `db upgrade`, `ingest` and `rules run`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailbridge.cli.context import Ctx, handled, pass_ctx
from mailbridge.cli.dates import WHEN_HELP, parse_when
from mailbridge.cli.output import emit_json


@click.command()
@pass_ctx
@handled
def run(ctx: Ctx) -> None:
    """The daemon: listeners, pollers, scheduler, outbox sender."""
    from mailbridge.daemon import run_daemon

    sys.exit(run_daemon(ctx.config_path))


@click.command("check-config")
@pass_ctx
@handled
def check_config(ctx: Ctx) -> None:
    """Validate the config: exit 0, or 2 with `file:line: key: message` per error."""
    from mailbridge.config import describe

    seen = describe(ctx.settings)
    click.echo(f"{seen['config']}: ok")
    click.echo(f"  database:  {seen['database']}")
    click.echo(f"  addresses: {seen['addresses']}")


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
@handled
def db_upgrade(ctx: Ctx) -> None:
    """Apply schema migrations."""
    from mailbridge.storage import open_store

    store = open_store(ctx.settings.database.url, migrate=False)
    click.echo(f"database at revision {store.upgrade(ctx.settings.queue_list[0].name)}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@click.option("--dry-run", is_flag=True, help="decide and explain, write nothing")
@pass_ctx
@handled
def ingest(ctx: Ctx, paths: tuple[Path, ...], as_json: bool, dry_run: bool) -> None:
    """Ingest .eml files, directories, mbox files or Maildirs."""
    from mailbridge.cli.file_ingest import FileIngest

    if not FileIngest(ctx.app, as_json, dry_run).run(paths):
        sys.exit(1)


@click.group()
def rules() -> None:
    """Time rules: postponements and the [[rules]] of the config."""


@rules.command("run")
@click.option("--at", "at", metavar="TIME", help=f"as of TIME ({WHEN_HELP}); default now")
@click.option("--dry-run", is_flag=True, help="show what would change, change nothing")
@click.option("--json", "as_json", is_flag=True, help="a JSON array of the changes")
@pass_ctx
@handled
def rules_run(ctx: Ctx, at: str | None, dry_run: bool, as_json: bool) -> None:
    """Run the scheduler's rules once (for cron or a systemd timer, and for tests)."""
    from mailbridge.sweeps import Sweeps

    app = ctx.app
    when = parse_when(at, app.clock(), "--at") if at else app.clock()
    sweeps = Sweeps(app.store, app.settings, app.clock, app.outbound)
    changes = sweeps.run(when, dry_run=dry_run)
    if as_json:
        emit_json([c.as_json() for c in changes])
        return
    for change in changes:
        click.echo(change.describe())
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {len(changes)} tickets as of {when.isoformat()}", err=True)
