"""Command line: argument parsing and dispatch only (SPEC section 5). Exit 0 ok, 1 refused/not found, 2 usage/config."""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from mailbridge.errors import ConfigError, MailbridgeError, NotFound, Refused, StorageUnavailable

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.config_path = config
        self._app: Any = None

    @functools.cached_property
    def settings(self) -> Any:
        from mailbridge.config import load_settings

        return load_settings(self.config_path)

    @property
    def app(self) -> Any:
        if self._app is None:
            from mailbridge.app import App

            self._app = App.build(self.settings)
        return self._app


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"mailbridge: {message}", err=True)
    sys.exit(code)


def handled(fn: F) -> F:
    """Translate mailbridge's errors into the exit codes of the contract."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for line in exc.problems:
                click.echo(line, err=True)
            sys.exit(2)
        except (NotFound, Refused) as exc:
            fail(str(exc), 1)
        except StorageUnavailable as exc:
            fail(str(exc), 1)
        except MailbridgeError as exc:
            fail(str(exc), 1)

    return cast(F, wrapper)  # functools.wraps keeps the signature mypy cannot see


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli:unknown"


WHEN_HELP = "+2d, +3h, 3d, tomorrow 09:00, 2026-12-01 or 2026-12-01T09:00 (UTC)"
MAX_AHEAD = timedelta(days=3660)  # ten years: anything later is a typo, not a plan
_PLUS = re.compile(r"\+\s*(\d+\s*[mhdw])", re.IGNORECASE)
_DAY_WORD = re.compile(r"(today|tomorrow)(?:\s+(\d{1,2}):(\d\d))?", re.IGNORECASE)


def parse_when(value: str, now: datetime | None = None, option: str = "--until") -> datetime:
    """A time as people type it; a bad or absurd one ends the command with one line, exit 2."""
    from mailbridge.agent_commands import postpone_until

    now = now or datetime.now(UTC)
    text = value.strip()
    try:
        if plus := _PLUS.fullmatch(text):
            text = plus[1]
        if day := _DAY_WORD.fullmatch(text):
            hour, minute = int(day[2] or 0), int(day[3] or 0)
            base = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            when = base + timedelta(days=day[1].lower() == "tomorrow", hours=hour, minutes=minute)
            if hour > 23 or minute > 59:
                raise ValueError(f"no such time of day: {day[2]}:{day[3]}")
        else:
            when = postpone_until(text, now)
        if when - now > MAX_AHEAD:
            raise OverflowError
    except OverflowError:
        fail(f"{option} {value!r}: out of range (at most ten years ahead)", 2)
    except ValueError as exc:
        fail(f"{option} {value!r}: {exc} (use {WHEN_HELP})", 2)
    return when


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


CONFIG_HELP = (
    "config file (default: $MAILBRIDGE_CONFIG, then ./config/mailbridge.toml, "
    "then the embedded default)"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help=CONFIG_HELP)
@click.version_option(
    package_name="mailbridge", prog_name="mailbridge", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """mailbridge: turns a support mailbox into tickets."""
    ctx.obj = Ctx(config)


pass_ctx = click.make_pass_decorator(Ctx)


@cli.command()
@pass_ctx
@handled
def run(ctx: Ctx) -> None:
    """The daemon: listeners, pollers, scheduler, outbox sender."""
    from mailbridge.daemon import run_daemon

    sys.exit(run_daemon(ctx.config_path))


@cli.command("check-config")
@pass_ctx
@handled
def check_config(ctx: Ctx) -> None:
    """Validate the config: exit 0, or 2 with `file:line: key: message` per error."""
    from mailbridge.config import describe

    seen = describe(ctx.settings)
    click.echo(f"{seen['config']}: ok")
    click.echo(f"  database:  {seen['database']}")
    click.echo(f"  addresses: {seen['addresses']}")


@cli.group()
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


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@click.option("--dry-run", is_flag=True, help="decide and explain, write nothing")
@pass_ctx
@handled
def ingest(ctx: Ctx, paths: tuple[Path, ...], as_json: bool, dry_run: bool) -> None:
    """Ingest .eml files, directories, mbox files or Maildirs."""
    from mailbridge.envelope import Envelope, Source
    from mailbridge.ingest.pool import ParsePool, parse_ahead
    from mailbridge.sources.files import Skipped, count_messages, iter_messages

    app = ctx.app
    batch_size = max(1, app.settings.database.batch_size)
    unreadable: list[str] = []
    skipped: list[str] = []
    counts: dict[str, int] = {}

    limit = app.settings.smtp.max_message_size  # what the listener would refuse, ingest refuses

    def skip(exc: Skipped) -> None:
        skipped.append(str(exc))
        click.echo(f"mailbridge: skipped {exc}", err=True)

    def messages() -> Iterator[tuple[bytes, str]]:
        for path in paths:
            try:
                yield from iter_messages(path, limit, skip)
            except OSError as exc:
                unreadable.append(f"{path}: {exc.strerror or exc}")

    def report(outcome: Any) -> None:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        if as_json:
            click.echo(json.dumps(outcome.as_json(), ensure_ascii=False))
        elif dry_run or not sys.stderr.isatty():
            where = f"#{outcome.ticket}" if outcome.ticket else "-"
            click.echo(f"{outcome.source}: {outcome.outcome} {where} ({outcome.reason})")

    def batches() -> Iterator[list[tuple[bytes, Envelope, Source]]]:
        batch: list[tuple[bytes, Envelope, Source]] = []
        for raw, label in messages():
            source = Source("file", label, live=False)
            if dry_run:
                report(app.ingestor.explain(raw, Envelope(), source))
                advance(1)
                continue
            batch.append((raw, Envelope(), source))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # worker processes parse the next batch while this one commits; dry runs parse in process
    parser = None if dry_run else ParsePool.from_settings(app.settings)
    with (
        _progress(count_messages(list(paths)) if sys.stderr.isatty() else None) as advance,
        parser or contextlib.nullcontext(),
    ):
        for items, results in parse_ahead(parser, batches()):
            for outcome in app.ingestor.accept_many(items, results):
                report(outcome)
            advance(len(items))
    if not as_json:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
        click.echo(f"{'would ingest' if dry_run else 'ingested'}: {summary}", err=True)
    for problem in unreadable:
        click.echo(f"mailbridge: cannot read {problem}", err=True)
    if unreadable or skipped:  # an input left unread was not handled (SPEC section 5)
        sys.exit(1)


class _progress:
    """A progress bar on a terminal, nothing otherwise."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.total or self.total < 20:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("ingesting", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@cli.command()
@click.option(
    "--status",
    type=click.Choice(
        ["new", "open", "answered", "resolved", "closed", "postponed", "spam", "deleted"]
    ),
    help="only tickets in this status",
)
@click.option("--queue", metavar="Q", help="only this queue's tickets")
@click.option("--owner", metavar="A", help="only tickets this agent owns")
@click.option("--unassigned", is_flag=True, help="only tickets nobody owns")
@click.option("--tag", metavar="T", help="only tickets with this tag")
@click.option(
    "--priority", type=click.Choice(["low", "normal", "high", "urgent"]), help="only this priority"
)
@click.option("--json", "as_json", is_flag=True, help="a JSON array instead of a table")
@click.option("--breached", is_flag=True, help="only tickets that missed an SLA target")
@pass_ctx
@handled
def tickets(
    ctx: Ctx, status: str | None, as_json: bool, breached: bool = False, **filters: Any
) -> None:
    """List tickets."""
    from mailbridge import views
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        found = [
            (t, n)
            for t, n in repo.list_tickets(session, status, **filters)
            if not breached or t.sla_breached
        ]
        tags = repo.tags_of(session, [t.number for t, _ in found])
        rows = [views.ticket_summary(t, n, tags.get(t.number)) for t, n in found]
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "#", "status", "queue", "owner", "subject", "customer", "msgs", "updated", box=None
    )
    for r in rows:
        table.add_row(
            str(r["number"]),
            r["status"],
            r["queue"],
            r["owner"] or "-",
            r["subject"][:60],
            r["customer"],
            str(r["message_count"]),
            r["updated_at"],
        )
    Console(width=max(120, Console().width)).print(table)


@cli.group()
def ticket() -> None:
    """Show or change one ticket."""


@ticket.command("show")
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True, help="one JSON object (SPEC section 5)")
@pass_ctx
@handled
def ticket_show(ctx: Ctx, number: int, as_json: bool) -> None:
    """One ticket: its messages and events, interleaved by time."""
    from mailbridge import views
    from mailbridge.storage import repo

    app = ctx.app
    with app.store.unit() as session:
        t = repo.get_ticket(session, number)
        if t is None:
            raise NotFound(f"no ticket #{number}")
        messages, events = (
            repo.ticket_messages(session, number),
            repo.ticket_events(session, number),
        )
        reply_to = app.reply_to(t.token, t.queue)
        tags = repo.tags_of(session, [number]).get(number, [])
        from mailbridge.sweeps import sla_clock

        sla = views.sla_view(t, *sla_clock(app.settings, t, events))
        if as_json:
            emit_json(views.ticket_detail(t, reply_to, messages, events, tags) | {"sla": sla})
        else:
            lines = views.thread_lines(t, reply_to, messages, events)
            if sla is not None:
                missed = ", ".join(sla["breached"]) or "none"
                dues = ", ".join(
                    f"{k.removesuffix('_due')} {v}"
                    for k, v in sla.items()
                    if k.endswith("_due") and v
                )
                lines.insert(
                    4,
                    f"  sla:       {sla['name']}: {dues or 'no due time running'}; breached: {missed}",
                )
            click.echo("\n".join(lines))


def _action(name: str) -> None:
    @ticket.command(
        name, help=f"{name.capitalize()} a ticket (same transition as the agent command)."
    )
    @click.argument("number", type=int)
    @pass_ctx
    @handled
    def command(ctx: Ctx, number: int) -> None:
        changed = ctx.app.actions.act(number, name, actor())
        click.echo(f"ticket #{number}: {changed.from_status} -> {changed.to_status}")


for _name in ("resolve", "close", "spam", "delete", "restore"):
    _action(_name)


@ticket.command("postpone")
@click.argument("number", type=int)
@click.option(
    "--until",
    "until",
    required=True,
    metavar="WHEN",
    help=WHEN_HELP,
)
@pass_ctx
@handled
def ticket_postpone(ctx: Ctx, number: int, until: str) -> None:
    """Postpone a ticket until WHEN."""
    when = parse_when(until)
    changed = ctx.app.actions.act(number, "postpone", actor(), when)
    click.echo(f"ticket #{number}: {changed.from_status} -> {changed.to_status}")


@ticket.command("purge")
@click.argument("number", type=int)
@pass_ctx
@handled
def ticket_purge(ctx: Ctx, number: int) -> None:
    """Remove a closed, spam or deleted ticket for good (its Message-IDs are remembered)."""
    removed = ctx.app.actions.purge(number, actor())
    click.echo(f"ticket #{number} purged ({removed} messages)")


@cli.group()
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
        click.echo(
            f"{r['id']:>6}  {r['created_at']}  {r['kind']:<11} {r['state']:<8} {r['sender'] or '-':<30} {r['reason']}"
        )
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
    for key, value in data.items():
        click.echo(f"{key + ':':<12} {value}")
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
    from mailbridge.storage import repo

    if bool(pks) == retry_all:
        fail("give quarantine IDs or --all, not both", 2)
    if reason is not None and not retry_all:
        fail("--reason selects entries for --all", 2)
    from mailbridge.ingest.pool import ParsePool

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


@cli.group()
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


@cli.group()
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
    from mailbridge.sweeps import SweepConfig, Sweeps

    app = ctx.app
    when = parse_when(at, app.clock(), "--at") if at else app.clock()
    sweeps = Sweeps(app.store, SweepConfig.from_settings(app.settings), app.clock, app.outbound)
    changes = sweeps.run(when, dry_run=dry_run)
    if as_json:
        emit_json([c.as_json() for c in changes])
        return
    for change in changes:
        click.echo(change.describe())
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {len(changes)} tickets as of {when.isoformat()}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@click.option("--html", "html_file", metavar="FILE", help="write a self-contained page of charts")
@click.option("--since", metavar="WHEN", help="only tickets created from then on (e.g. 2026-11-01)")
@click.option("--until", metavar="WHEN", help="only tickets created before then")
@click.option(
    "--by",
    type=click.Choice(["queue", "owner", "tag", "priority"]),
    help="show only this breakdown (default: all four)",
)
@pass_ctx
@handled
def report(
    ctx: Ctx,
    as_json: bool,
    html_file: str | None,
    since: str | None,
    until: str | None,
    by: str | None,
) -> None:
    """Lifecycle analytics: tickets per status, response and resolution times, reopen rate."""
    from mailbridge.report import BY, build_report, render

    app = ctx.app
    now = app.clock()
    start = _report_when(since, now) if since else None
    end = _report_when(until, now) if until else None
    data = build_report(app.store, now, start, end)
    if html_file:
        from mailbridge.report_html import render_html

        Path(html_file).write_text(render_html(data), encoding="utf-8")
        click.echo(f"wrote {html_file}", err=True)
    if as_json:
        emit_json(data)
    elif not html_file:
        click.echo(render(data, by=(by,) if by else BY), nl=False)


def _report_when(value: str, now: datetime) -> datetime:
    when = parse_when(value, now)
    # a duration looks back here ("7d": a week ago), where for postpone it looks ahead
    relative = re.fullmatch(r"\s*\d+\s*[a-zA-Z]+\s*", value)
    return now - (when - now) if relative else when


@cli.group()
def outbox() -> None:
    """Outgoing mail: acknowledgements, notifications and relayed replies."""


def _outbox_view(row: Any) -> dict[str, Any]:
    from mailbridge.views import iso

    return {
        "id": row.id,
        "ticket": row.ticket_number,
        "kind": row.kind,
        "state": row.state,
        "mail_from": row.mail_from,
        "rcpt_tos": [a for a in row.rcpt_tos.split(",") if a],
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if row.state == "queued" else None,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
    }


@outbox.command("list")
@click.option("--failed", is_flag=True, help="only mail that was given up on")
@click.option("--json", "as_json", is_flag=True, help="a JSON array")
@pass_ctx
@handled
def outbox_list(ctx: Ctx, failed: bool, as_json: bool) -> None:
    """Outbox rows: id, state, kind, ticket, attempts, recipients, last error."""
    from mailbridge.storage import repo

    with ctx.app.store.unit() as session:
        rows = [_outbox_view(r) for r in repo.list_outbox(session, "failed" if failed else None)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        ticket = f"#{r['ticket']}" if r["ticket"] else "-"
        click.echo(
            f"{r['id']:>6}  {r['state']:<6} {r['kind']:<6} {ticket:<6} "
            f"{r['attempts']:>2}x  {','.join(r['rcpt_tos'])}  {r['last_error'] or ''}".rstrip()
        )
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
        data = _outbox_view(row)
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key + ':':<16} {'-' if value is None else value}")


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


def _accept_config_anywhere(group: click.Group) -> None:
    """`mailbridge run --config x` as well as `mailbridge --config x run`: the option is added to
    every subcommand and stored where the group's own option goes."""

    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.ensure_object(Ctx).config_path = value

    for command in group.commands.values():
        command.params.append(
            click.Option(
                ["--config"],
                metavar="PATH",
                help=CONFIG_HELP,
                expose_value=False,
                callback=remember,
            )
        )
        if isinstance(command, click.Group):
            _accept_config_anywhere(command)


from mailbridge import cli_queues  # noqa: E402  (registers its commands on `cli` and `ticket`)

cli_queues.register(cli, ticket, pass_ctx, handled, actor, emit_json)


_accept_config_anywhere(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="mailbridge", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return 0
