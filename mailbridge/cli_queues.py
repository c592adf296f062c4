"""Commands of SPEC 7: `ticket assign|queue|tag|priority` and `queues`. Parsing and dispatch only;
the checks are `ownership`'s, the same the agents' mail commands go through."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from mailbridge import ownership
from mailbridge.errors import NotFound, Refused

WAITING = ("new", "open")  # waiting for an agent
LIVE = ("new", "open", "answered", "postponed")


@contextmanager
def _changing(app: Any, number: int) -> Iterator[tuple[Any, Any]]:
    from mailbridge.storage import repo

    with app.store.unit() as session:
        ticket = repo.get_ticket(session, number, lock=True)
        if ticket is None:
            raise NotFound(f"no ticket #{number}")
        try:
            yield session, ticket
        except ownership.Refused as exc:
            raise Refused(f"ticket #{number}: {exc}") from None


def queue_rows(settings: Any, groups: list[Any], now: datetime) -> list[dict[str, Any]]:
    """Per queue: tickets per status, unassigned live tickets, the oldest waiting ticket's age."""
    from mailbridge.views import iso

    names = [q.name for q in settings.queue_list]
    names += sorted({g[0] for g in groups} - set(names))  # queues since removed from the config
    rows = []
    for name in names:
        mine = [g for g in groups if g[0] == name]
        statuses: dict[str, int] = {}
        for _, status, _, count, _ in mine:
            statuses[status] = statuses.get(status, 0) + count
        waiting = [oldest for _, status, _, _, oldest in mine if status in WAITING and oldest]
        since = min(waiting) if waiting else None
        rows.append(
            {
                "queue": name,
                "tickets": dict(sorted(statuses.items())),
                "total": sum(statuses.values()),
                "unassigned": sum(n for _, s, unowned, n, _ in mine if unowned and s in LIVE),
                "oldest_waiting_since": iso(since),
                "oldest_waiting_seconds": int((now - since).total_seconds()) if since else None,
            }
        )
    return rows


def register(
    cli: click.Group,
    ticket: click.Group,
    pass_ctx: Callable[..., Any],
    handled: Callable[..., Any],
    actor: Callable[[], str],
    emit_json: Callable[[Any], None],
) -> None:
    @ticket.command("assign")
    @click.argument("number", type=int)
    @click.argument("agent", required=False)
    @click.option("--none", "unassign", is_flag=True, help="leave the ticket unowned")
    @pass_ctx
    @handled
    def ticket_assign(ctx: Any, number: int, agent: str | None, unassign: bool) -> None:
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
    def ticket_queue(ctx: Any, number: int, queue: str) -> None:
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
    def ticket_tag(ctx: Any, number: int, words: tuple[str, ...], remove: bool) -> None:
        """Tag a ticket (lowercase words), or untag it with --remove."""
        from mailbridge.storage import repo

        app = ctx.app
        with _changing(app, number) as (session, t):
            ownership.tag(session, t, list(words), actor(), app.clock(), remove=remove)
            tags = repo.tags_of(session, [number]).get(number, [])
        click.echo(f"ticket #{number}: tags {' '.join(tags) or '(none)'}")

    @ticket.command("priority")
    @click.argument("number", type=int)
    @click.argument("priority", type=click.Choice(["low", "normal", "high", "urgent"]))
    @pass_ctx
    @handled
    def ticket_priority(ctx: Any, number: int, priority: str) -> None:
        """Set a ticket's priority."""
        app = ctx.app
        with _changing(app, number) as (session, t):
            ownership.prioritise(session, t, priority, actor(), app.clock())
        click.echo(f"ticket #{number}: priority {priority}")

    @cli.command("queues")
    @click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per queue")
    @pass_ctx
    @handled
    def queues(ctx: Any, as_json: bool) -> None:
        """Each queue: tickets per status, unassigned, the oldest waiting ticket's age."""
        from mailbridge.storage import repo

        app = ctx.app
        with app.store.unit() as session:
            rows = queue_rows(app.settings, repo.queue_summary(session), app.clock())
        if as_json:
            emit_json(rows)
            return
        for row in rows:
            counts = ", ".join(f"{s} {n}" for s, n in row["tickets"].items()) or "no tickets"
            age = row["oldest_waiting_seconds"]
            waiting = f"oldest waiting {_age(age)}" if age is not None else "nothing waiting"
            click.echo(f"{row['queue']}: {counts}; unassigned {row['unassigned']}; {waiting}")


def _age(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
