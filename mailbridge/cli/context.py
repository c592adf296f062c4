"""What every command shares: the config and the app built from it on first use, the exit codes
of the contract (SPEC section 5: 0 ok, 1 refused or not found, 2 usage or config), the actor."""

from __future__ import annotations

import functools
import getpass
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

from mailbridge.errors import ConfigError, MailbridgeError

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = (
    "config file (default: $MAILBRIDGE_CONFIG, then ./config/mailbridge.toml, "
    "then the embedded default)"
)


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.config_path = config
        self._app: App | None = None

    # built on first use: `--help` and `check-config` must not need a database
    @functools.cached_property
    def settings(self) -> Settings:
        from mailbridge.config import load_settings

        return load_settings(self.config_path)

    @property
    def app(self) -> App:
        if self._app is None:
            from mailbridge.app import App

            self._app = App.build(self.settings)
        return self._app


pass_ctx = click.make_pass_decorator(Ctx)


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
        except MailbridgeError as exc:  # not found, refused, storage unavailable, ...
            fail(str(exc), 1)

    return cast(F, wrapper)  # functools.wraps keeps the signature mypy cannot see


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli:unknown"
