"""`tickets` and `ticket show|resolve|close|spam|delete|restore|postpone|purge` (SPEC section 5).
The ownership subcommands of `ticket` are `cli.queues`'."""

from __future__ import annotations

from typing import Any

import click

from mailbridge.cli.context import Ctx, actor, handled, pass_ctx
from mailbridge.cli.dates import WHEN_HELP, parse_when
from mailbridge.cli.output import emit_json, print_ticket_table, sla_line
from mailbridge.errors import NotFound
from mailbridge.lifecycle import Status
from mailbridge.routing import PRIORITIES


@click.command()
@click.option(
    "--status",
    type=click.Choice([s.value for s in Status]),
    help="only tickets in this status",
)
@click.option("--queue", metavar="Q", help="only this queue's tickets")
@click.option("--owner", metavar="A", help="only tickets this agent owns")
@click.option("--unassigned", is_flag=True, help="only tickets nobody owns")
@click.option("--tag", metavar="T", help="only tickets with this tag")
@click.option("--priority", type=click.Choice(PRIORITIES), help="only this priority")
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
    else:
        print_ticket_table(rows)


@click.group()
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
    from mailbridge.sweeps import sla_clock

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
        sla = views.sla_view(t, *sla_clock(app.settings, t, events))
        if as_json:
            emit_json(views.ticket_detail(t, reply_to, messages, events, tags) | {"sla": sla})
        else:
            lines = views.thread_lines(t, reply_to, messages, events)
            if sla is not None:
                lines.insert(4, sla_line(sla))
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
