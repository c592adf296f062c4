"""A real SMTP smarthost for outbound tests: aiosmtpd in the test process, no mock of smtplib.

`SmtpSink` records every accepted message (envelope sender, recipients, bytes, whether the session
was TLS and who authenticated) and every DATA attempt with the reply it got. Replies are
scriptable: `sink.script("421 4.3.2 busy", "250 OK")` answers the next two DATA commands so,
`sink.refuse_rcpt("x@y", "550 5.1.1 no such user")` refuses a recipient for good.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bench.servers.ports import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    auth_user: str | None
    helo: str = ""  # the name the client gave in EHLO/HELO
    smtputf8: bool = False  # whether MAIL FROM asked for SMTPUTF8

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)


@dataclass(frozen=True)
class Attempt:
    rcpt_tos: tuple[str, ...]
    reply: str


class SmtpSink:
    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        users: dict[str, str] | None = None,
        smtputf8: bool = False,
    ) -> None:
        self.received: list[Received] = []
        self.attempts: list[Attempt] = []
        self._replies: deque[str] = deque()
        self._rcpt_replies: dict[str, str] = {}
        self._users = users
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.host = "127.0.0.1"
        self.port = free_port()
        kwargs: dict[str, Any] = {
            "tls_context": tls_context,
            "require_starttls": require_starttls,
            "enable_SMTPUTF8": smtputf8,
        }
        if users is not None:
            kwargs |= {
                "authenticator": self._authenticate,
                "auth_require_tls": tls_context is not None,
            }
        self.controller = Controller(self, hostname=self.host, port=self.port, **kwargs)

    # --- scripting ---------------------------------------------------------------------

    def script(self, *replies: str) -> None:
        """Answer the next DATA commands with these replies, in order; then 250 again."""
        with self._lock:
            self._replies.extend(replies)

    def refuse_rcpt(self, address: str, reply: str) -> None:
        with self._lock:
            self._rcpt_replies[address.lower()] = reply

    # --- what arrived ------------------------------------------------------------------

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if address.lower() in (a.lower() for a in r.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until `count` messages were accepted in all (for tests of the running daemon)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.received)} of {count} messages arrived")
                self._arrived.wait(left)
            return list(self.received)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.attempts.clear()

    # --- aiosmtpd hooks ----------------------------------------------------------------

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self._users is not None:
            login, password = data.login.decode(), data.password.decode()
            if self._users.get(login) == password:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self._lock:
            reply = self._rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._arrived:
            reply = self._replies.popleft() if self._replies else "250 2.0.0 OK: queued"
            self.attempts.append(Attempt(tuple(envelope.rcpt_tos), reply))
            if reply.startswith("2"):
                self.received.append(
                    Received(
                        envelope.mail_from,
                        tuple(envelope.rcpt_tos),
                        envelope.original_content,
                        session.ssl is not None,
                        session.auth_data if session.authenticated else None,
                        session.host_name or "",
                        envelope.smtp_utf8,
                    )
                )
                self._arrived.notify_all()
        return reply

    # --- lifetime ----------------------------------------------------------------------

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @classmethod
    @contextmanager
    def running(cls, **kwargs: Any) -> Iterator[SmtpSink]:
        sink = cls(**kwargs).start()
        try:
            yield sink
        finally:
            sink.stop()

    def outbound_toml(self, **extra: object) -> str:
        """An `[outbound]` table pointing at this sink."""
        lines = ["[outbound]", f'smarthost = "{self.host}"', f"port = {self.port}"]
        for key, value in extra.items():
            lines.append(f"{key} = {_toml(value)}")
        return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def tls_pair(directory: Path, hostname: str = "127.0.0.1") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate: (server context for the sink, client context trusting it)."""
    from bench.servers.certs import self_signed

    cert_file, key_file = self_signed(directory, hostname, stem="sink")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
