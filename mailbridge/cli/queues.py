"""Commands of SPEC 7: `ticket assign|queue|tag|priority` and `queues`. Parsing and dispatch only;
the checks are `ownership`'s, the same the agents' mail commands go through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from mailbridge import ownership
from mailbridge.cli.context import Ctx, actor, handled, pass_ctx
from mailbridge.cli.output import emit_json, queue_line, queue_rows
from mailbridge.cli.tickets import ticket
from mailbridge.errors import NotFound, Refused
from mailbridge.routing import PRIORITIES

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.storage.models import Ticket


@contextmanager
def _changing(app: App, number: int) -> Iterator[tuple[Any, Ticket]]:
    """The ticket, locked, in one unit of work; ownership's refusal names the ticket."""
    # the session stays untyped here: only storage/ may import SQLAlchemy
    from mailbridge.storage import repo

    with app.store.unit() as session:
        ticket = repo.get_ticket(session, number, lock=True)
        if ticket is None:
            raise NotFound(f"no ticket #{number}")
        try:
            yield session, ticket
        except ownership.Refused as exc:
            raise Refused(f"ticket #{number}: {exc}") from None


@ticket.command("assign")
@click.argument("number", type=int)
@click.argument("agent", required=False)
@click.option("--none", "unassign", is_flag=True, help="leave the ticket unowned")
@pass_ctx
@handled
def ticket_assign(ctx: Ctx, number: int, agent: str | None, unassign: bool) -> None:
    """Give a ticket an owner (an agent address or local part), or none."""
    if (agent is None) != unassign:
        raise click.UsageError("give an AGENT or --none")
    app = ctx.app
    with _changing(app, number) as (session, t):
        ownership.assign(session, app.settings, t, agent, actor(), app.clock())
        owner = t.owner
    click.echo(f"ticket #{number}: owner {owner or 'none'}")


@ticket.command("queue")
@click.argument("number", type=int)
@click.argument("queue")
@pass_ctx
@handled
def ticket_queue(ctx: Ctx, number: int, queue: str) -> None:
    """Move a ticket to another queue."""
    app = ctx.app
    with _changing(app, number) as (session, t):
        ownership.move(session, app.settings, t, queue, actor(), app.clock())
    click.echo(f"ticket #{number}: queue {queue}")


@ticket.command("tag")
@click.argument("number", type=int)
@click.argument("words", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="take the tags off instead")
@pass_ctx
@handled
def ticket_tag(ctx: Ctx, number: int, words: tuple[str, ...], remove: bool) -> None:
    """Tag a ticket (lowercase words), or untag it with --remove."""
    from mailbridge.storage import repo

    app = ctx.app
    with _changing(app, number) as (session, t):
        ownership.tag(session, t, list(words), actor(), app.clock(), remove=remove)
        tags = repo.tags_of(session, [number]).get(number, [])
    click.echo(f"ticket #{number}: tags {' '.join(tags) or '(none)'}")


@ticket.command("priority")
@click.argument("number", type=int)
@click.argument("priority", type=click.Choice(PRIORITIES))
@pass_ctx
@handled
def ticket_priority(ctx: Ctx, number: int, priority: str) -> None:
    """Set a ticket's priority."""
    app = ctx.app
    with _changing(app, number) as (session, t):
        ownership.prioritise(session, t, priority, actor(), app.clock())
    click.echo(f"ticket #{number}: priority {priority}")


@click.command("queues")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per queue")
@pass_ctx
@handled
def queues(ctx: Ctx, as_json: bool) -> None:
    """Each queue: tickets per status, unassigned, the oldest waiting ticket's age."""
    from mailbridge.storage import repo

    app = ctx.app
    with app.store.unit() as session:
        names = [q.name for q in app.settings.queue_list]
        rows = queue_rows(names, repo.queue_summary(session), app.clock())
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(queue_line(row))
