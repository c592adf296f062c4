"""`[smtp]` and `[[imap]]`: where mail comes in."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, PrivateAttr, ValidationInfo, model_validator

from mailbridge.config.types import (
    MB,
    Address,
    Bool,
    Count,
    Duration,
    EnvName,
    FilePath,
    Loc,
    Port,
    Secret,
    Section,
    Size,
    base_dir,
    read_secret,
    reject,
    split_listen,
)


def _smtp_listen(value: str, info: ValidationInfo) -> str:
    where = split_listen(value)
    return f"unix:{base_dir(info) / where}" if isinstance(where, Path) else value


def _socket_mode(value: str) -> str:
    # a string, as chmod writes it: a TOML integer 0660 would be read as decimal 660
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f"invalid socket mode {value!r} (use octal permissions, e.g. '0660')")
    return value


def _group(value: str) -> str:
    import grp

    try:
        grp.getgrnam(value)
    except KeyError:
        raise ValueError(f"no such group: {value!r}") from None
    return value


def _peer(value: str) -> str:
    if value == "unix":
        return value
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"not an IP address or network: {value!r} (e.g. 127.0.0.1, 10.0.0.0/8, ::1 or unix)"
        ) from None
    return value


def _after(value: str) -> str:
    if value not in ("seen", "delete") and not (value.startswith("move:") and value[5:].strip()):
        raise ValueError("must be one of: seen, delete, move:<folder>")
    return value


class SmtpSettings(Section):
    listen: Annotated[str, AfterValidator(_smtp_listen)] = "127.0.0.1:2525"
    mode: Literal["smtp", "lmtp"] = "smtp"
    hostname: str | None = None
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    require_tls: Bool = False
    auth_users_file: FilePath | None = None
    auth_require_tls: Bool = True
    addresses: tuple[Address, ...] = ("support@localhost",)
    max_message_size: Size = 25 * MB
    max_recipients: Count = 100
    max_connections_per_client: Count = 20
    # clients whose Authentication-Results headers count: the MTA in front of us, not the world
    trusted_peers: tuple[Annotated[str, AfterValidator(_peer)], ...] = (
        "127.0.0.0/8",
        "::1",
        "unix",
    )
    # fits the unit's LimitNOFILE=65536 with room to spare; see SmtpListener.start
    max_connections: Count = 1000
    timeout: Duration = timedelta(minutes=5)  # idle: no bytes from the client for this long
    # DATA may last data_timeout + bytes received / data_min_rate (bytes per second)
    data_timeout: Duration = timedelta(minutes=10)
    data_min_rate: Size = 1024
    auth_max_failures: Count = 5  # per client address (IPv6: per /64) and per login
    auth_lockout: Duration = timedelta(minutes=5)
    # listener processes sharing the port (SO_REUSEPORT); more than 1 only on PostgreSQL
    workers: Count = 1
    # a unix: listen socket's permissions, set before READY; group: who may deliver (Postfix)
    socket_mode: Annotated[str, AfterValidator(_socket_mode)] = "0660"
    socket_group: Annotated[str, AfterValidator(_group)] | None = None

    @property
    def endpoint(self) -> tuple[str, int] | Path:
        return split_listen(self.listen)

    @model_validator(mode="after")
    def _check(self) -> SmtpSettings:
        problems: list[tuple[Loc, str]] = []
        tls = self.tls_cert is not None and self.tls_key is not None
        if not tls and (self.tls_cert or self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            problems.append(((missing,), "set both tls_cert and tls_key, or neither"))
        if self.require_tls and not tls:
            problems.append((("require_tls",), "needs tls_cert and tls_key"))
        if self.auth_users_file and self.auth_require_tls and not tls:
            # aiosmtpd would then never offer AUTH: fail here, not at the first agent's login
            problems.append(
                (
                    ("auth_users_file",),
                    "AUTH needs tls_cert and tls_key (or auth_require_tls = false)",
                )
            )
        if not self.addresses:
            problems.append((("addresses",), "list at least one support address"))
        if self.workers > 1 and isinstance(self.endpoint, Path):
            problems.append((("workers",), "workers > 1 needs a TCP listen address (SO_REUSEPORT)"))
        reject("smtp", problems)
        return self


class ImapAccount(Section):
    name: str
    host: str
    port: Port
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    verify_tls: Bool = True
    ca_file: FilePath | None = None
    username: str
    password_file: FilePath | None = None
    password_env: EnvName | None = None
    oauth2_token_command: str | None = None  # run by the poller at each login, never here
    folder: str = "INBOX"
    sent_folder: str | None = None
    after: Annotated[str, AfterValidator(_after)] = "seen"
    idle: Bool = True
    poll_interval: Duration = timedelta(seconds=60)
    batch_size: Count = 100
    max_message_size: Size = 50 * MB  # larger messages are quarantined as oversize
    _password: Secret | None = PrivateAttr(default=None)

    @property
    def password(self) -> Secret | None:
        """The password from password_file or password_env; None with oauth2_token_command."""
        return self._password

    @property
    def after_action(self) -> Literal["seen", "move", "delete"]:
        return self.after.partition(":")[0]  # type: ignore[return-value]

    @property
    def after_folder(self) -> str | None:
        return self.after.partition(":")[2].strip() or None

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and "port" not in data:
            return {**data, "port": 993 if data.get("tls", "implicit") == "implicit" else 143}
        return data

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ImapAccount:
        problems: list[tuple[Loc, str]] = []
        sources = ("password_file", "password_env", "oauth2_token_command")
        given = [key for key in sources if getattr(self, key) is not None]
        if not given:
            problems.append(((), "needs one of password_file, password_env, oauth2_token_command"))
        elif len(given) > 1:
            problems.append(((given[1],), f"set only one of {', '.join(given)}"))
        if self.tls == "none" and not _is_loopback(self.host):
            problems.append((("tls",), "none is allowed only for 127.0.0.1, ::1 or localhost"))
        reject("imap", problems)
        self._password = read_secret(self.password_file, self.password_env, info)
        return self


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"
