"""Command line: argument parsing and dispatch only (SPEC section 5). Exit 0 ok, 1 refused/not found, 2 usage/config.

The group and `--config` live here; the commands, one module per family: `admin` (run,
check-config, db, ingest, rules), `tickets` (tickets, ticket ...), `queues` (queues and the
ownership subcommands of ticket), `messages` (message, quarantine, outbox), `report`. What
they print beyond `views` is `output`'s; `ingest`'s loop is `file_ingest`'s.
"""

from __future__ import annotations

import click

from mailbridge.cli import admin, messages, queues, report, tickets
from mailbridge.cli.context import CONFIG_HELP, Ctx


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help=CONFIG_HELP)
@click.version_option(
    package_name="mailbridge", prog_name="mailbridge", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """mailbridge: turns a support mailbox into tickets."""
    ctx.obj = Ctx(config)


for _command in (
    admin.run,
    admin.check_config,
    admin.db,
    admin.ingest,
    tickets.tickets,
    tickets.ticket,
    messages.quarantine,
    messages.message,
    admin.rules,
    report.report,
    messages.outbox,
    queues.queues,
):
    cli.add_command(_command)


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


_accept_config_anywhere(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="mailbridge", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return 0


__all__ = ["cli", "main"]
