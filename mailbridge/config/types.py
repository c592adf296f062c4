"""The small value types config sections are built from: durations, sizes, addresses, listen
addresses, files and secrets, each with the validator that turns TOML into it.

A validator raises `ValueError` with the message the user sees after `file:line: key:`; the
loader (config/load.py) adds the place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MB = 1024 * 1024
MAX_SIZE = 1024 * MB
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


class Section(BaseModel):
    """A config table: unknown keys are errors, and settings never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def reject(title: str, problems: list[tuple[Loc, str]]) -> None:
    """Raise cross-key problems together, each at its own key, so none hides another."""
    if problems:
        # the message goes in as data: a template would eat braces like "{number}"
        errors = [PydanticCustomError("config", "{msg}", {"msg": msg}) for _, msg in problems]
        details = [
            InitErrorDetails(type=e, loc=loc, input=None)
            for e, (loc, _) in zip(errors, problems, strict=True)
        ]
        raise ValidationError.from_exception_data(title, details)


# --- validators ----------------------------------------------------------------------------

_DURATION = re.compile(r"(?:\d+[smhdw])+")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+)\s*([KMG]?)B?", re.IGNORECASE)
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
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
    if not ADDRESS.fullmatch(value):
        raise ValueError(f"not an email address: {value!r}")
    return value.lower()


def _domain(value: str) -> str:
    domain = value.lower().removeprefix("@")  # "@example.com" is a natural way to write it
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"not a domain name: {value!r}")
    return domain


def _address_or_domain(value: str) -> str:
    # a whole address, or every address of a domain when written `@example.com`
    return "@" + _domain(value) if value.startswith("@") else _address(value)


def split_listen(listen: str) -> tuple[str, int] | Path:
    """`host:port` or `[::1]:port` -> (host, port); `unix:/path` -> the socket's Path."""
    if listen.startswith("unix:") and len(listen) > 5:
        return Path(listen[5:])
    m = _HOSTPORT.fullmatch(listen)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"invalid address {listen!r} (use host:port, [::1]:port or unix:/path)")
    return m["v6"] or m["host"], int(m["port"])


def base_dir(info: ValidationInfo) -> Path:
    """The directory relative paths resolve against: the config file's, else the cwd."""
    return (info.context or {}).get("base_dir") or Path.cwd()


def environ(info: ValidationInfo) -> Mapping[str, str]:
    """The environment secrets are read from (tests pass their own)."""
    return (info.context or {}).get("env", os.environ)


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = base_dir(info) / value.expanduser()  # an absolute value replaces the base
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _env_set(value: str, info: ValidationInfo) -> str:
    if not environ(info).get(value):
        raise ValueError(f"environment variable {value} is not set")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def read_secret(file: Path | None, env_name: str | None, info: ValidationInfo) -> Secret | None:
    """The secret from a `*_file` or `*_env` key, whichever is set; None if neither."""
    # existence and unset variables were reported per key already; this only fetches the value
    if file is not None:
        try:
            return Secret(file.read_text(encoding="utf-8").rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            reject("secret", [(("password_file",), f"cannot read {file}: {reason}")])
    if env_name is not None:
        return Secret(environ(info)[env_name])
    return None


Bool = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Count = Annotated[int, Strict(), Field(ge=1)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Address = Annotated[str, AfterValidator(_address)]
Domain = Annotated[str, AfterValidator(_domain)]
AddressOrDomain = Annotated[str, AfterValidator(_address_or_domain)]
FilePath = Annotated[Path, AfterValidator(_existing_file)]
EnvName = Annotated[str, AfterValidator(_env_set)]
Regex = Annotated[str, AfterValidator(_regex)]
Priority = Literal["low", "normal", "high", "urgent"]
