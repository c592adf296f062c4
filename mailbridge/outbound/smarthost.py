"""The outbox's SMTP client: one connection to the smarthost per batch, and what its replies mean.

Any trouble before a mail is under way (connection, TLS, a 421 greeting, a refused login) is
temporary for the mail; during a transaction, 4xx replies are temporary and 5xx permanent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailbridge.errors import DeliveryError
from mailbridge.outbound.claim import Job, Result

if TYPE_CHECKING:
    from mailbridge.config import Secret, Settings


@dataclass(frozen=True, slots=True)
class SmarthostConfig:
    """`[outbound]` as the SMTP client reads it."""

    host: str | None  # None: outbound mail is off and waits in the outbox
    port: int
    starttls: bool
    username: str | None
    password: Secret | None
    timeout: float  # seconds, per SMTP command
    helo_name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SmarthostConfig:
        out = settings.outbound
        return cls(
            host=out.smarthost,
            port=out.port,
            starttls=out.starttls,
            username=out.username,
            password=out.password,
            timeout=out.timeout.total_seconds(),
            # smtplib would say EHLO [127.0.0.1] when the host's name has no dot: name ourselves
            helo_name=settings.smtp.hostname or socket.getfqdn(),
        )

    @property
    def tls(self) -> bool:
        return self.starttls or self.port == 465

    @property
    def auth_in_clear(self) -> bool:
        """Whether the password would cross the network unencrypted."""
        return bool(self.username) and not self.tls and not _is_loopback(self.host or "")


class Relay:
    """One batch's connection: opened for the first mail, dropped after any failure (its state is
    unknown) and opened again for the next, closed politely at the end. Once the smarthost
    cannot be reached, the batch's other mails get the same result instead of hammering it."""

    def __init__(self, config: SmarthostConfig, tls: Callable[[], ssl.SSLContext]) -> None:
        self.config = config
        self._tls = tls
        self.conn: smtplib.SMTP | None = None
        self.unreachable: Result | None = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        _close(self.conn, polite=True)
        self.conn = None

    def send(self, job: Job) -> Result:
        if job.raw is None:
            return Result(False, "the mail could not be written", permanent=True)
        if self.unreachable is not None:
            return self.unreachable
        try:
            self.conn = self.conn or self._connect()
            result = _send(self.conn, job)
        except DeliveryError as exc:
            result = Result(False, str(exc), exc.permanent)
            if self.conn is None:
                self.unreachable = result
        if not result.sent:
            _close(self.conn)
            self.conn = None
        return result

    def _connect(self) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH as configured; any failure is temporary for the mail."""
        c = self.config
        context = self._tls() if c.tls else None
        try:
            if c.port == 465 and not c.starttls:  # submissions: TLS from the first byte
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host or "",
                    c.port,
                    local_hostname=c.helo_name,
                    timeout=c.timeout,
                    context=context,
                )
            else:
                conn = smtplib.SMTP(
                    c.host or "", c.port, local_hostname=c.helo_name, timeout=c.timeout
                )
            conn.ehlo()
            if c.starttls:
                conn.starttls(context=context)
                conn.ehlo()
            if c.username:
                conn.login(c.username, c.password.get() if c.password else "")
            return conn
        except smtplib.SMTPResponseException as exc:
            # a refusal before any message (421 busy, 535 bad password) says nothing about the mail
            raise DeliveryError(
                f"smarthost: {_reply(exc.smtp_code, exc.smtp_error)}", permanent=False
            ) from exc
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(
                f"smarthost {c.host}:{c.port}: {exc.__class__.__name__}: {exc}",
                permanent=False,
            ) from exc


def _send(conn: smtplib.SMTP, job: Job) -> Result:
    assert job.raw is not None
    # 8-bit content (a forwarded message/rfc822, say) needs BODY=8BITMIME where offered
    options = ["BODY=8BITMIME"] if not job.raw.isascii() and conn.has_extn("8bitmime") else []
    utf8 = [r for r in job.rcpt_tos if not r.isascii()]
    if utf8 and not conn.has_extn("smtputf8"):
        # a retry would not make the smarthost offer it: fail now, so the agent hears why
        return Result(
            False,
            f"not deliverable: {', '.join(utf8)} needs SMTPUTF8, "
            "which the smarthost does not offer",
            permanent=True,
        )
    if utf8:
        options.append("SMTPUTF8")
    try:
        refused = conn.sendmail(job.mail_from, list(job.rcpt_tos), job.raw, mail_options=options)
    except smtplib.SMTPRecipientsRefused as exc:
        replies = [_reply(code, text) for code, text in exc.recipients.values()]
        permanent = all(code >= 500 for code, _ in exc.recipients.values())
        return Result(
            False,
            "; ".join(f"{r}: {m}" for r, m in zip(exc.recipients, replies, strict=True)),
            permanent,
        )
    except smtplib.SMTPResponseException as exc:
        return Result(False, _reply(exc.smtp_code, exc.smtp_error), exc.smtp_code >= 500)
    except (smtplib.SMTPException, OSError) as exc:
        return Result(False, f"{exc.__class__.__name__}: {exc}")
    notes = tuple(f"{r}: {_reply(code, text)}" for r, (code, text) in refused.items())
    return Result(True, refused=notes)


def _close(conn: smtplib.SMTP | None, polite: bool = False) -> None:
    if conn is None:
        return
    with contextlib.suppress(smtplib.SMTPException, OSError):
        if polite:
            conn.quit()
        else:
            conn.close()


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"[:1000]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"
