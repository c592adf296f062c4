"""The mailbridge.toml the tests run with, written by one function, and the types of the
`make_settings` / `make_app` fixtures of tests/conftest.py that turn it into Settings and an App.

Every test config has the same support address and the same agents (alice, agents.example.com,
the team@ notify list); a test says only what it adds or leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.config import Settings

SUPPORT = "support@example.com"
AGENTS = """addresses = ["alice@example.com"]
domains = ["agents.example.com"]
notify = ["team@example.com"]
"""
# the border MTA whose Authentication-Results mailbridge believes
TRUSTED = 'trusted_authserv_ids = ["mx.example.com"]\n'
OUTBOUND = f'[outbound]\nfrom_address = "{SUPPORT}"\n'


def mailbridge_toml(
    url: str,
    *,
    database: str = "",
    listen: str | None = None,
    smtp: str = "",
    agents: str | None = AGENTS + TRUSTED,
    tickets: str | None = None,
    outbound: str | None = OUTBOUND,
    log: str | None = None,
    extra: str = "",
) -> str:
    """A config on `url` for mail to support@example.com.

    `database`, `smtp`, `agents`, `tickets` and `log` are lines of their table (`None`: the table
    is left out); `outbound` is the whole [outbound] table (`SmtpSink.outbound_toml()` writes one
    for a sink); `extra` is appended last, so text in it without a table header of its own
    continues the last table written.
    """
    parts = [f'[database]\nurl = "{url}"\n{database}']
    listen_line = f'listen = "{listen}"\n' if listen is not None else ""
    parts.append(f'[smtp]\n{listen_line}addresses = ["{SUPPORT}"]\n{smtp}')
    if agents is not None:
        parts.append(f"[agents]\n{agents}")
    if tickets is not None:
        parts.append(f"[tickets]\n{tickets}")
    if outbound is not None:
        parts.append(outbound)
    if log is not None:
        parts.append(f"[log]\n{log}")
    parts.append(extra)
    return "\n\n".join(parts) + "\n"


# `{url}` is replaced by the database URL the test runs on
BASE_CONFIG = mailbridge_toml("{url}")


def node_toml(
    url: str,
    node: str,
    port: int,
    *,
    tickets: str,
    outbound: str | None,
    cluster: str = "",
    extra: str = "",
) -> str:
    """One of several `mailbridge run` nodes on one database: its own listener and node id, a
    pool of 4, no agents, warnings only in its log."""
    return mailbridge_toml(
        url,
        database="pool_size = 4\n",
        listen=f"127.0.0.1:{port}",
        agents=None,
        tickets=tickets,
        outbound=outbound,
        log='level = "warning"\n',
        extra=f'[cluster]\nnode_id = "{node}"\n{cluster}\n{extra}',
    )


def imap_account(port: int, **options: str) -> str:
    """One `[[imap]]` table for the support mailbox of a private Dovecot (values are TOML)."""
    lines = [
        "[[imap]]",
        'name = "support"',
        'host = "127.0.0.1"',
        f"port = {port}",
        'tls = "none"',
        f'username = "{SUPPORT}"',
        'password_env = "MB_TEST_IMAP_PASSWORD"',
        *(f"{key} = {value}" for key, value in options.items()),
    ]
    return "\n".join(lines) + "\n"


class MakeSettings(Protocol):
    """The `make_settings` fixture: Settings from `base` (default BASE_CONFIG) plus `extra`."""

    def __call__(self, url: str, extra: str = "", base: str = BASE_CONFIG) -> Settings: ...


class MakeApp(Protocol):
    """The `make_app` fixture: an App with the test clock, closed after the test."""

    def __call__(self, url: str, extra: str = "", base: str = BASE_CONFIG) -> App: ...
