"""`report`: the lifecycle analytics of `mailbridge.report`, as tables, JSON or a page of charts."""

from __future__ import annotations

from pathlib import Path

import click

from mailbridge.cli.context import Ctx, handled, pass_ctx
from mailbridge.cli.dates import parse_bound
from mailbridge.cli.output import emit_json
from mailbridge.report.text import BY


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@click.option("--html", "html_file", metavar="FILE", help="write a self-contained page of charts")
@click.option("--since", metavar="WHEN", help="only tickets created from then on (e.g. 2026-11-01)")
@click.option("--until", metavar="WHEN", help="only tickets created before then")
@click.option(
    "--by",
    type=click.Choice(BY),
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
    from mailbridge.report import build_report, render

    app = ctx.app
    now = app.clock()
    start = parse_bound(since, now) if since else None
    end = parse_bound(until, now) if until else None
    data = build_report(app.store, now, start, end)
    if html_file:
        from mailbridge.report.html import render_html

        Path(html_file).write_text(render_html(data), encoding="utf-8")
        click.echo(f"wrote {html_file}", err=True)
    if as_json:
        emit_json(data)
    elif not html_file:
        click.echo(render(data, by=(by,) if by else BY), nl=False)
