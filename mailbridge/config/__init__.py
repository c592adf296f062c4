"""TOML -> validated, frozen settings; loaded once by the composition root and passed down.

Every problem in a file is reported at once, one `file:line: key: message` line each (SPEC
section 5, `check-config`). Secrets never sit in the file: they are read from a file or the
environment at load and held in `Secret`, which never prints.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from bisect import bisect_right
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from mailbridge import business_time, correlate, lifecycle
from mailbridge.errors import ConfigError

ENV_VAR = "MAILBRIDGE_CONFIG"
DEFAULT_PATH = Path("config/mailbridge.toml")
MB = 1024 * 1024
MAX_SIZE = 1024 * MB
# what storage/engine.py can open with the declared dependencies (the psycopg extra for PostgreSQL)
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")
Loc = tuple[str | int, ...]  # a key path as pydantic reports it: ("imap", 1, "port")


class Secret:
    """A string that never prints; call `.get()` at the one place that needs the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --- value types -------------------------------------------------------------------------

_DURATION = re.compile(r"(?:\d+[smhdw])+")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+)\s*([KMG]?)B?", re.IGNORECASE)
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_HOSTPORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})")


def _duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(int(n) * _SECONDS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
    else:
        raise ValueError(f"invalid duration {value!r} (use e.g. 90s, 15m, 2h, 7d, 1w)")
    if seconds <= 0:
        raise ValueError("must be a positive duration")
    return timedelta(seconds=seconds)


def _size(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        size = int(m[1]) * 1024 ** " KMG".index(m[2].upper() or " ")
    else:
        raise ValueError(f"invalid size {value!r} (use e.g. 512KB, 25MB, 1GB)")
    if size <= 0:
        raise ValueError("must be a positive size")
    if size > MAX_SIZE:
        # a whole mail is held in memory while it is parsed and stored: beyond 1 GB is a typo
        raise ValueError(f"must be at most 1GB (got {value!r})")
    return size


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"not an email address: {value!r}")
    return value.lower()


def _domain(value: str) -> str:
    domain = value.lower().removeprefix("@")  # "@example.com" is a natural way to write it
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"not a domain name: {value!r}")
    return domain


def _sender(value: str) -> str:
    # a blocked entry is a whole domain when written `@example.com`
    return "@" + _domain(value) if value.startswith("@") else _address(value)


def split_listen(listen: str) -> tuple[str, int] | Path:
    """`host:port` or `[::1]:port` -> (host, port); `unix:/path` -> the socket's Path."""
    if listen.startswith("unix:") and len(listen) > 5:
        return Path(listen[5:])
    m = _HOSTPORT.fullmatch(listen)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"invalid address {listen!r} (use host:port, [::1]:port or unix:/path)")
    return m["v6"] or m["host"], int(m["port"])


def _base_dir(info: ValidationInfo) -> Path:
    return (info.context or {}).get("base_dir") or Path.cwd()


def _smtp_listen(value: str, info: ValidationInfo) -> str:
    where = split_listen(value)
    return f"unix:{_base_dir(info) / where}" if isinstance(where, Path) else value


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


def _metrics_listen(value: str) -> str:
    if isinstance(split_listen(value), Path):
        raise ValueError(f"invalid address {value!r} (use host:port)")
    return value


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = _base_dir(info) / value.expanduser()  # an absolute value replaces the base
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    return (info.context or {}).get("env", os.environ)


def _env_set(value: str, info: ValidationInfo) -> str:
    if not _environ(info).get(value):
        raise ValueError(f"environment variable {value} is not set")
    return value


def _database_url(value: str) -> str:
    scheme = re.match(r"([a-z][a-z0-9+.-]*)://", value)
    if not scheme:
        raise ValueError(f"not a database URL: {value!r} (e.g. sqlite:///var/mailbridge.db)")
    if scheme[1] not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database {scheme[1]}:// (use sqlite:///path or postgresql://user@host/db)"
        )
    return value


def _subject_tag(value: str) -> str:
    try:
        ok = "{number}" in value and value.format(number=1) != value
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise ValueError("must contain {number} and no other {...} fields, e.g. '[#{number}]'")
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


Bool = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Count = Annotated[int, Strict(), Field(ge=1)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Address = Annotated[str, AfterValidator(_address)]
Domain = Annotated[str, AfterValidator(_domain)]
FilePath = Annotated[Path, AfterValidator(_existing_file)]
EnvName = Annotated[str, AfterValidator(_env_set)]
Status = Literal["new", "open", "answered", "resolved", "closed", "postponed", "spam", "deleted"]


# --- sections ----------------------------------------------------------------------------


def _reject(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise cross-key problems together, each at its own key, so none hides another."""
    if problems:
        # the message goes in as data: a template would eat braces like "{number}"
        errors = [PydanticCustomError("config", "{msg}", {"msg": msg}) for _, msg in problems]
        details = [
            InitErrorDetails(type=e, loc=loc, input=None)
            for e, (loc, _) in zip(errors, problems, strict=True)
        ]
        raise ValidationError.from_exception_data(title, details)


def _read_secret(file: Path | None, env_name: str | None, info: ValidationInfo) -> Secret | None:
    # existence and unset variables were reported per key already; this only fetches the value
    if file is not None:
        try:
            return Secret(file.read_text(encoding="utf-8").rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            _reject("secret", [(("password_file",), f"cannot read {file}: {reason}")])
    if env_name is not None:
        return Secret(_environ(info)[env_name])
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: Annotated[str, AfterValidator(_database_url)] = "sqlite:///var/mailbridge.db"
    pool_size: Count = 5
    batch_size: Count = 100  # messages per group commit in `ingest`


class SmtpSettings(_Section):
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
        _reject("smtp", problems)
        return self


class ImapAccount(_Section):
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
        _reject("imap", problems)
        self._password = _read_secret(self.password_file, self.password_env, info)
        return self


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


class AgentsSettings(_Section):
    addresses: tuple[Address, ...] = ()
    domains: tuple[Domain, ...] = ()
    trusted_authserv_ids: tuple[str, ...] = ()
    notify: tuple[Address, ...] = ()
    display_names: Bool = True  # relayed replies show the agent's name


class TicketsSettings(_Section):
    subject_tag: Annotated[str, AfterValidator(_subject_tag)] = "[#{number}]"
    plus_separator: Literal["+", "-", "_", ".", "="] = "+"
    acknowledge: Bool = False
    ack_template: FilePath | None = None
    ack_max_per_sender_per_hour: Annotated[int, Strict(), Field(ge=0)] = 3
    # backscatter: forged senders spread over one domain, or over many, are bounded too
    ack_max_per_domain_per_hour: Annotated[int, Strict(), Field(ge=0)] = 20
    ack_max_per_hour: Annotated[int, Strict(), Field(ge=0)] = 200
    max_new_per_sender_per_hour: Count = 20
    blocked_senders: tuple[Annotated[str, AfterValidator(_sender)], ...] = ()
    max_participants: Count = 20  # per ticket, the customer included: whom a relay reaches
    # a customer reply to a resolved ticket whose first line is one of these closes it (SPEC 8)
    customer_close_words: tuple[Annotated[str, Field(min_length=1)], ...] = (
        "close",
        "#close",
        "solved",
    )


class OutboundSettings(_Section):
    smarthost: str | None = None  # None: outbound disabled, mail stays queued in the outbox
    port: Port = 25
    starttls: Bool = False
    username: str | None = None
    password_file: FilePath | None = None
    password_env: EnvName | None = None
    from_address: Address | None = None  # Settings fills in the first smtp address
    from_name: str = "Support"
    timeout: Duration = timedelta(seconds=30)
    max_attempts: Count = 10
    identity: str | None = None  # the X-Loop value; Settings fills in from_address
    _password: Secret | None = PrivateAttr(default=None)

    @property
    def password(self) -> Secret | None:
        return self._password

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> OutboundSettings:
        problems: list[tuple[Loc, str]] = []
        if self.password_file and self.password_env:
            problems.append((("password_env",), "set only one of password_file, password_env"))
        if self.username and not (self.password_file or self.password_env):
            problems.append((("username",), "needs password_file or password_env"))
        if not self.username and (self.password_file or self.password_env):
            problems.append((("username",), "missing: a password needs a username"))
        _reject("outbound", problems)
        self._password = _read_secret(self.password_file, self.password_env, info)
        return self


# which statuses a rule may act on: the rest are refused by the lifecycle table (SPEC 1)
_RULE_FROM = lifecycle.RULE_FROM


class Rule(_Section):
    name: str
    when: Status | tuple[Status, ...]  # one status or a list (SPEC 8)
    idle_for: Duration
    then: Literal["resolved", "closed", "purge", "remind", "escalate"]
    notify: Bool = False
    # narrow a rule to some tickets (SPEC 8); queue and priority exist with queues (SPEC 7)
    queue: str | None = None
    priority: Literal["low", "normal", "high", "urgent"] | None = None
    tags: tuple[str, ...] = ()
    # the mail of remind / escalate, and of a status rule's notify; default: bundled templates
    template: FilePath | None = None
    # escalate: addresses, and the words "owner" (the ticket's owner) and "queue" (its notify)
    to: tuple[str, ...] = ()
    # escalate: the ticket is unowned and assigned again by its queue's strategy, skipping
    # the previous owner (SPEC 7, 8)
    reassign: Bool = False

    @property
    def statuses(self) -> tuple[str, ...]:
        return (self.when,) if isinstance(self.when, str) else tuple(self.when)

    @model_validator(mode="after")
    def _check(self) -> Rule:
        allowed = _RULE_FROM[self.then]
        wrong = [s for s in self.statuses if s not in allowed]
        if wrong or not self.statuses:
            choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            _reject("rules", [(("then",), f"{self.then} needs when = {choices}")])
        if self.then == "escalate" and not self.to:
            _reject("rules", [(("to",), 'escalate needs to = addresses, "owner" or "queue"')])
        if self.reassign and self.then != "escalate":
            _reject("rules", [(("reassign",), 'reassign needs then = "escalate"')])
        bad = [t for t in self.to if t not in ("owner", "queue") and not _ADDRESS.fullmatch(t)]
        if bad:
            _reject("rules", [(("to",), f"not an address, owner or queue: {bad[0]!r}")])
        return self


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


def _webhook_events(value: tuple[str, ...]) -> tuple[str, ...]:
    from mailbridge.outbound.webhooks import (
        EVENT_NAMES,  # the names live beside the code that matches them
    )

    unknown = [name for name in value if name not in EVENT_NAMES]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r} (one of: {', '.join(sorted(EVENT_NAMES))})")
    if not value:
        raise ValueError("list at least one event")
    return value


class Webhook(_Section):
    name: str
    url: Annotated[str, AfterValidator(_webhook_url)]
    events: Annotated[tuple[str, ...], AfterValidator(_webhook_events)]
    secret_env: EnvName | None = None
    secret_file: FilePath | None = None
    timeout: Duration = timedelta(seconds=10)
    _secret: Secret | None = PrivateAttr(default=None)

    @property
    def secret(self) -> Secret:
        assert self._secret is not None  # validation guarantees one
        return self._secret

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Webhook:
        if self.secret_env and self.secret_file:
            _reject("webhooks", [(("secret_file",), "set only one of secret_env, secret_file")])
        if not (self.secret_env or self.secret_file):
            # an unsigned post could come from anyone: receivers must be able to check
            _reject("webhooks", [((), "needs secret_env or secret_file (the HMAC key)")])
        if self.secret_file is not None:
            try:
                self._secret = Secret(self.secret_file.read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as exc:
                _reject("webhooks", [(("secret_file",), f"cannot read {self.secret_file}: {exc}")])
        else:
            self._secret = Secret(_environ(info)[str(self.secret_env)])
        return self


def _queue_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", value):
        raise ValueError(f"invalid queue name {value!r} (use [a-z0-9-]+)")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _tag(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        raise ValueError(f"invalid tag {value!r} (lowercase words: [a-z0-9_-]+)")
    return value


def _match_address(value: str) -> str:
    # a filter matches a whole address, or every address of a domain when written `@example.com`
    return "@" + _domain(value) if value.startswith("@") else _address(value)


Priority = Literal["low", "normal", "high", "urgent"]
Regex = Annotated[str, AfterValidator(_regex)]


class Queue(_Section):
    """A department (SPEC 7): where mail to its addresses or IMAP accounts lands, and who owns it."""

    name: Annotated[str, AfterValidator(_queue_name)]
    addresses: tuple[Address, ...] = ()
    imap: tuple[str, ...] = ()
    from_address: Address | None = None  # default: the first address, else [outbound]'s
    from_name: str | None = None  # default: [outbound] from_name
    notify: tuple[Address, ...] | None = None  # default: [agents] notify
    members: tuple[Address, ...] = ()  # empty: every agent
    assign: Literal["none", "round_robin", "least_open", "sticky"] = "none"
    assign_on_reply: Bool = False
    ack_template: FilePath | None = None


class FilterMatch(_Section):
    from_: Annotated[str, AfterValidator(_match_address)] | None = Field(None, alias="from")
    to: Annotated[str, AfterValidator(_match_address)] | None = None
    subject: Regex | None = None
    body: Regex | None = None
    header: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _check(self) -> FilterMatch:
        if (self.header is None) != (self.regex is None):
            _reject(
                "filters",
                [(("header" if self.header is None else "regex",), "header and regex go together")],
            )
        if not any((self.from_, self.to, self.subject, self.body, self.header)):
            _reject("filters", [((), "match at least one of from, to, subject, body, header")])
        return self


class FilterSet(_Section):
    queue: str | None = None
    tags: tuple[Annotated[str, AfterValidator(_tag)], ...] = ()
    priority: Priority | None = None
    owner: Address | None = None
    status: Literal["spam"] | None = None


class Filter(_Section):
    name: str
    match: FilterMatch
    set_: FilterSet = Field(alias="set")
    stop: Bool = False


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class MetricsSettings(_Section):
    listen: Annotated[str, AfterValidator(_metrics_listen)] | None = None  # None: no endpoint


class CalendarSettings(_Section):
    """`[[calendars]]`: working time for SLA targets (SPEC 8)."""

    name: str
    timezone: str
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    hours: str = "09:00-17:00"
    holidays: tuple[date, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> CalendarSettings:
        self.calendar()  # every ValueError names the bad value
        return self

    def calendar(self) -> business_time.Calendar:
        return business_time.make_calendar(
            self.name, self.timezone, self.days, self.hours, self.holidays
        )


SlaPriority = Literal["low", "normal", "high", "urgent"]


class SlaSettings(_Section):
    """`[[sla]]`: targets for the tickets of some queues and/or priorities; first match wins."""

    name: str
    queues: tuple[str, ...] = ()
    priorities: tuple[SlaPriority, ...] = ()
    calendar: str | None = None
    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None

    def applies(self, queue: str, priority: str) -> bool:
        return (not self.queues or queue in self.queues) and (
            not self.priorities or priority in self.priorities
        )


class ClusterSettings(_Section):
    node_id: str | None = None  # None: the host name (mailbridge.node)
    lease_ttl: Duration = timedelta(seconds=30)


class ParseSettings(_Section):
    # worker processes that parse; None: one per CPU; 0: parse in process, without a deadline
    workers: Annotated[int, Strict(), Field(ge=0)] | None = None
    timeout: Duration = timedelta(seconds=30)  # per message; then quarantined "parse timeout"
    inline_max_size: Size = 4 * 1024  # mail up to this size is parsed in process


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    imap: tuple[ImapAccount, ...] = ()
    agents: AgentsSettings = AgentsSettings()
    tickets: TicketsSettings = TicketsSettings()
    outbound: OutboundSettings = OutboundSettings()
    rules: tuple[Rule, ...] = ()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    webhooks: tuple[Webhook, ...] = ()
    queues: tuple[Queue, ...] = ()
    filters: tuple[Filter, ...] = ()
    parse: ParseSettings = ParseSettings()
    calendars: tuple[CalendarSettings, ...] = ()
    sla: tuple[SlaSettings, ...] = ()
    _source_path: Path | None = PrivateAttr(default=None)
    _queue_list: tuple[Queue, ...] = PrivateAttr(default=())
    _addressing: correlate.Addressing | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file these settings came from; None for the embedded default."""
        return self._source_path

    @property
    def queue_list(self) -> tuple[Queue, ...]:
        """The queues in effect: the configured ones, else one `support` holding [smtp] addresses."""
        # built once: ingest asks for it for every new ticket
        if not self._queue_list:
            self._queue_list = self.queues or (
                Queue(name="support", addresses=self.smtp.addresses),
            )
        return self._queue_list

    @property
    def addressing(self) -> correlate.Addressing:
        """Plus-tokens on the accepted addresses and the subject tag, built once per config."""
        if self._addressing is None:
            self._addressing = correlate.Addressing(
                [a.lower() for a in self.accepted_addresses],
                self.tickets.plus_separator,
                self.tickets.subject_tag,
            )
        return self._addressing

    @property
    def accepted_addresses(self) -> tuple[str, ...]:
        """Every address the listener accepts (plus-tokens on them too): [smtp] and the queues'."""
        found = [*self.smtp.addresses, *(a for q in self.queues for a in q.addresses)]
        return tuple(dict.fromkeys(found))

    def queue(self, name: str | None) -> Queue:
        """A queue by name; the first queue for an unknown name (e.g. one removed from the config)."""
        queues = self.queue_list
        return next((q for q in queues if q.name == name), queues[0])

    def queue_sender(self, name: str | None) -> tuple[str, str]:
        """(from address, from name) of a queue's outbound mail."""
        queue = self.queue(name)
        fallback = self.outbound.from_address or self.smtp.addresses[0]
        address = queue.from_address or (
            queue.addresses[0] if self.queues and queue.addresses else fallback
        )
        return address.lower(), queue.from_name or self.outbound.from_name

    def queue_members(self, name: str | None) -> tuple[str, ...]:
        """Who may own the queue's tickets: its members, else every agent listed by address."""
        return self.queue(name).members or self.agents.addresses

    def queue_notify(self, name: str | None) -> tuple[str, ...]:
        notify = self.queue(name).notify
        return self.agents.notify if notify is None else notify

    def is_agent(self, address: str) -> bool:
        address = address.lower()
        return address in self.agents.addresses or address.rpartition("@")[2] in self.agents.domains

    @model_validator(mode="after")
    def _check_queues(self) -> Settings:
        problems: list[tuple[Loc, str]] = []
        owner_of: dict[str, str] = {}
        imap_names = {account.name for account in self.imap}
        for i, queue in enumerate(self.queues):
            for j, address in enumerate(queue.addresses):
                other = owner_of.setdefault(address, queue.name)
                if other != queue.name:
                    problems.append(
                        (
                            ("queues", i, "addresses", j),
                            f"{address} is also an address of queue {other!r}",
                        )
                    )
            for j, name in enumerate(queue.imap):
                if name not in imap_names:
                    problems.append((("queues", i, "imap", j), f"no [[imap]] named {name!r}"))
            for j, member in enumerate(queue.members):
                if not self.is_agent(member):
                    problems.append(
                        (("queues", i, "members", j), f"{member} is not an agent ([agents])")
                    )
        names = {q.name for q in self.queue_list}
        for i, rule in enumerate(self.filters):
            if rule.set_.queue is not None and rule.set_.queue not in names:
                problems.append((("filters", i, "set"), f"unknown queue {rule.set_.queue!r}"))
            if rule.set_.owner is not None and not self.is_agent(rule.set_.owner):
                problems.append((("filters", i, "set"), f"{rule.set_.owner} is not an agent"))
        _reject("queues", problems)
        return self

    @model_validator(mode="after")
    def _check_sla(self) -> Settings:
        names = {c.name for c in self.calendars}
        _reject(
            "settings",
            [
                (("sla", i, "calendar"), f"unknown calendar {sla.calendar!r}")
                for i, sla in enumerate(self.sla)
                if sla.calendar is not None and sla.calendar not in names
            ],
        )
        return self

    def calendar_for(self, sla: SlaSettings) -> business_time.Calendar | None:
        for entry in self.calendars:
            if entry.name == sla.calendar:
                return entry.calendar()
        return None

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        # outbound mail leaves from, and loop-detects on, the first support address by default;
        # derived only from a valid address so one typo is not reported twice
        if not isinstance(data, dict):
            return data
        smtp, outbound = data.get("smtp", {}), data.get("outbound", {})
        if not (isinstance(smtp, dict) and isinstance(outbound, dict)):
            return data
        addresses = smtp.get("addresses", ["support@localhost"])
        first = addresses[0] if isinstance(addresses, list) and addresses else None
        sender = outbound.get("from_address", first)
        if not (isinstance(sender, str) and _ADDRESS.fullmatch(sender)):
            return data
        outbound = {"from_address": sender.lower(), "identity": sender.lower(), **outbound}
        return {**data, "outbound": outbound}

    @model_validator(mode="after")
    def _one_writer(self) -> Settings:
        # SQLite takes one writer at a time: a second listener process would only wait on its lock
        if self.smtp.workers > 1 and self.database.url.startswith("sqlite"):
            _reject(
                "settings",
                [(("smtp", "workers"), "workers > 1 needs PostgreSQL (SQLite has one writer)")],
            )
        return self


# --- loading and error reporting ---------------------------------------------------------


def resolve_config_path(path: str | Path | None) -> Path | None:
    """The file to read: PATH, else $MAILBRIDGE_CONFIG, else ./config/mailbridge.toml if present."""
    if path:
        return Path(path)
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def redact_url(url: str) -> str:
    """A database URL fit for logs: the password replaced by ***."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def describe(settings: Settings) -> dict[str, str]:
    """Which config is in force, for `run`'s startup log and `check-config`: a first run must
    show which file it read and where mail is accepted, not leave the user guessing."""
    where = settings.source_path
    return {
        "config": str(where) if where else "embedded default (no config file found)",
        "database": redact_url(settings.database.url),
        "addresses": ", ".join(settings.smtp.addresses) + " (and their plus-tokens)",
    }


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the config (see `resolve_config_path`); no file: the embedded default."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return parse_settings("", "<default>")
    try:
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{resolved}:1: (file): cannot read: {reason}"]) from exc
    return parse_settings(text, str(resolved), source_path=resolved)


def parse_settings(
    text: str,
    filename: str,
    *,
    source_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Validate TOML text; relative paths resolve against source_path's directory, else the cwd."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        line = int(m[1]) if m else text.count("\n") + 1
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", message)
        raise ConfigError([f"{filename}:{line}: (syntax): {message}"]) from exc
    base_dir = source_path.absolute().parent if source_path else Path.cwd()
    context = {"base_dir": base_dir, "env": os.environ if env is None else env}
    problems = _duplicate_names(data)
    settings, invalid = _validate(data, context)
    problems += invalid
    if problems or settings is None:
        lines = _locate(text)
        found = sorted((_line(lines, loc), _key(loc), msg) for loc, msg in problems)
        raise ConfigError([f"{filename}:{n}: {key}: {msg}" for n, key, msg in found])
    settings._source_path = source_path
    return settings


def _validate(
    data: dict[str, Any], context: dict[str, Any]
) -> tuple[Settings | None, list[tuple[Loc, str]]]:
    """Validate, and report every problem in one run: pydantic skips a table's cross-key checks
    while one of its keys is invalid, so invalid keys are set aside and the rest validated again.
    A cross-key problem that names a key set aside is only an echo of that key's own problem
    ("needs a password source" after "password_file: file not found") and is left out."""
    problems: list[tuple[Loc, str]] = []
    removed: list[Loc] = []
    for _ in range(8):  # each round removes at least one key; a config has few layers of checks
        try:
            return Settings.model_validate(data, context=context), problems
        except ValidationError as exc:
            errors = exc.errors()
        fresh = [
            (loc, message)
            for loc, message in ((tuple(e["loc"]), _message(e)) for e in errors)
            if (loc, message) not in problems  # e.g. a missing key, reported again each round
            and not any(_echoes(loc, message, r) for r in removed)
        ]
        problems += fresh
        data, dropped = _without(data, [loc for loc, _ in fresh])
        if not dropped:
            break
        removed += dropped
    return None, problems


def _echoes(loc: Loc, message: str, removed: Loc) -> bool:
    if loc[: len(removed)] == removed:
        return True
    table, key = removed[:-1], removed[-1]
    return loc[: len(table)] == table and isinstance(key, str) and key in f"{loc} {message}"


def _without(data: dict[str, Any], locs: list[Loc]) -> tuple[dict[str, Any], list[Loc]]:
    """A copy of data without the values at `locs` (a bad list item takes its whole list)."""
    import copy

    data = copy.deepcopy(data)
    dropped: list[Loc] = []
    for loc in locs:
        parent: Any = None
        node: Any = data
        key: str | int | None = None
        path: Loc = ()
        owner: tuple[Any, Any, Loc] | None = None  # the dict holding the innermost list
        for part in loc:
            if isinstance(node, dict) and part in node:
                if isinstance(node[part], list):
                    owner = (node, part, (*path, part))
            elif not (isinstance(node, list) and isinstance(part, int) and part < len(node)):
                break  # a cross-key problem: its key is not in the file, nothing to set aside
            parent, key, node, path = node, part, node[part], (*path, part)
        else:
            if isinstance(parent, dict):
                del parent[key]
                dropped.append(path)
            elif owner is not None and owner[1] in owner[0]:
                del owner[0][owner[1]]
                dropped.append(owner[2])
    return data, dropped


def _duplicate_names(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    # checked on the raw tables, so a duplicate is reported even beside other errors
    problems: list[tuple[Loc, str]] = []
    for section in ("imap", "rules", "webhooks", "queues", "filters", "calendars", "sla"):
        items, seen = data.get(section), set()
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name in seen:
                problems.append(((section, index, "name"), f"duplicate name {name!r}"))
            elif section == "rules" and name == "wake":
                # the postponement sweep acts as `rule:wake`; a rule of that name would be confused with it
                problems.append(((section, index, "name"), "'wake' is reserved for postponements"))
            seen.add(name)
    return problems


_MESSAGES = {
    "missing": "missing required key",
    "extra_forbidden": "unknown key",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "path_type": "expected a path",
}


def _message(error: Any) -> str:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind == "extra_forbidden" and loc[-1] == "password":
        extra = ", oauth2_token_command" if loc[0] == "imap" else ""
        return f"secrets never sit in the file: use password_file, password_env{extra}"
    if kind == "tuple_type" and isinstance(error.get("input"), dict):
        return f"expected an array of tables: write [[{loc[-1]}]]"
    if kind == "literal_error":
        return "must be one of: " + ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be at {'least' if 'ge' in ctx else 'most'} {ctx.get('ge', ctx.get('le'))}"
    return _MESSAGES.get(kind, error["msg"])


def _key(loc: Loc) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    return key or "(file)"


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    # a missing key has no line of its own: report its table's header instead
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER = re.compile(rf"(\[\[?)[ \t]*({_KEY})[ \t]*\]\]?")
_KEYVAL = re.compile(rf"({_KEY})[ \t]*=")
_STRING = re.compile(
    r'"""[\s\S]*?"""(?!")|\'\'\'[\s\S]*?\'\'\'(?!\')|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\''
)
_SCALAR = re.compile(r"[^\s,\]}#]+")
_SPACE = re.compile(r"\s*")


def _parts(key: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in re.findall(_KEY_PART, key))


def _locate(text: str) -> dict[Loc, int]:
    """Map key paths (`("imap", 1, "port")`) to 1-based lines; only run on text tomllib accepted."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    found: dict[Loc, int] = {}
    counts: dict[Loc, int] = {}
    table: Loc = ()

    def expand(parts: tuple[str, ...]) -> Loc:
        # `[imap.x]` after `[[imap]]` belongs to the latest imap entry
        path: Loc = ()
        for part in parts:
            path += (part,)
            if path in counts:
                path += (counts[path] - 1,)
        return path

    pos = 0
    while (pos := _SPACE.match(text, pos).end()) < len(text):  # type: ignore[union-attr]
        line = bisect_right(starts, pos)
        if header := _HEADER.match(text, pos):
            parts = _parts(header[2])
            if header[1] == "[[":
                array = (*expand(parts[:-1]), parts[-1])
                counts[array] = counts.get(array, 0) + 1
                found.setdefault(array, line)
                table = (*array, counts[array] - 1)
            else:
                table = expand(parts)
            found.setdefault(table, line)
            pos = header.end()
        elif keyval := _KEYVAL.match(text, pos):
            path = table + _parts(keyval[1])
            for end in range(len(table) + 1, len(path)):
                found.setdefault(path[:end], line)
            found[path] = line
            pos = _skip_value(text, keyval.end(), path, found, starts)
        else:  # a comment, or the rest of a line already consumed
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end + 1
    return found


def _skip_value(
    text: str,
    pos: int,
    path: Loc,
    found: dict[Loc, int],
    starts: list[int],
) -> int:
    """Step over one value (arrays may span lines), noting the line of each top-level array item."""
    stack: list[str] = []
    item, expect_item = 0, False
    while pos < len(text):
        ch = text[pos]
        if ch in " \t\r\n":
            if ch == "\n" and not stack:
                return pos
            pos += 1
            continue
        if ch == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        if stack == ["["] and expect_item and ch not in ",]":
            found[(*path, item)] = bisect_right(starts, pos)
            item, expect_item = item + 1, False
        if ch in "[{":
            stack.append(ch)
            expect_item = stack == ["["]
            pos += 1
        elif ch in "]}":
            stack.pop()
            pos += 1
        elif ch == ",":
            expect_item = stack == ["["]
            pos += 1
        else:
            token = _STRING.match(text, pos) or _SCALAR.match(text, pos)
            pos = token.end() if token else pos + 1
        if not stack:
            return pos
    return pos
