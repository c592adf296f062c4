"""`[outbound]` and `[[webhooks]]`: how mail and event posts leave."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, PrivateAttr, ValidationInfo, model_validator

from mailbridge.config.types import (
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
    environ,
    read_secret,
    reject,
)


class OutboundSettings(Section):
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
        reject("outbound", problems)
        self._password = read_secret(self.password_file, self.password_env, info)
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


class Webhook(Section):
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
            reject("webhooks", [(("secret_file",), "set only one of secret_env, secret_file")])
        if not (self.secret_env or self.secret_file):
            # an unsigned post could come from anyone: receivers must be able to check
            reject("webhooks", [((), "needs secret_env or secret_file (the HMAC key)")])
        if self.secret_file is not None:
            try:
                self._secret = Secret(self.secret_file.read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as exc:
                reject("webhooks", [(("secret_file",), f"cannot read {self.secret_file}: {exc}")])
        else:
            self._secret = Secret(environ(info)[str(self.secret_env)])
        return self
