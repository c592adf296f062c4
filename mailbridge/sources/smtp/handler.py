"""The aiosmtpd handler onto ingest: each `handle_*` hook's return value is the wire reply.

Like a Postfix receiver it only strips the protocol and sanity-checks (recipients, header count,
hops); everything else is ingest's job. One handler serves SMTP and LMTP alike. Mail reaches
`Ingestor.accept_each` through `commit.GroupCommit`, in committer threads of its own, and
password hashing runs on a thread of its own, so one slow commit never stalls the other sessions.
The `auth_*` hooks replace aiosmtpd's built-in PLAIN and LOGIN with the same exchange, the hash
checked off the event loop and failed logins limited (`auth`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING, AuthResult
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.errors import StorageUnavailable
from mailbridge.sources.smtp import replies
from mailbridge.sources.smtp.aiosmtpd_compat import register
from mailbridge.sources.smtp.auth import AuthThrottle, auth_delay, auth_keys
from mailbridge.sources.smtp.commit import GroupCommit

if TYPE_CHECKING:
    from mailbridge.metrics import Metrics
    from mailbridge.sources.smtp.listener import ListenerConfig
    from mailbridge.sources.smtp.protocol import Connection

log = logging.getLogger("mailbridge.smtp")

MAX_HEADER_FIELDS = 1000
MAX_RECEIVED = 100  # RFC 5321 6.3: a message with this many hops is looping
WORKER_LABEL = ""  # " worker=N" in each per-message line when [smtp] workers > 1

_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # a header field's name and colon (RFC 5322 2.2)


def header_problem(raw: bytes) -> str | None:
    """The reply for a header section over our limits, or None. Stops at the first body line."""
    fields = received = 0
    start = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end + 1
        line = raw[start:end]
        start = end
        if line in (b"\r\n", b"\n") or not (line[:1] in b" \t" or _FIELD.match(line)):
            break  # the blank line, or a line no header can be: the body begins
        if line[:1] in b" \t":
            continue  # a folded continuation of the previous field
        fields += 1
        received += line[:9].lower() == b"received:"
        if fields > MAX_HEADER_FIELDS:
            return replies.too_many_fields(MAX_HEADER_FIELDS)
        if received > MAX_RECEIVED:
            return replies.too_many_received(received)
    return None


def new_queue_id() -> str:
    """A random id for one accepted message: quoted in the 250 and logged beside the ticket."""
    return secrets.token_hex(5).upper()


class Handler:
    """aiosmtpd hooks. Each returns the wire status; the config is swapped whole on reload."""

    def __init__(
        self, ingest: GroupCommit, config: ListenerConfig, metrics: Metrics | None = None
    ) -> None:
        self.ingest = ingest
        self.config = config
        self.metrics = metrics
        # outlives reloads: a reload must not reset lockouts. Not named auth_*: aiosmtpd would
        # offer any handler attribute of that name as an AUTH mechanism
        self.throttle = AuthThrottle()

    async def handle_EHLO(
        self,
        server: Connection,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        # not offered when nobody can log in, nor in cleartext where only TLS allows it
        if self.config.users is None or (server.auth_needs_tls and not server.tls_active):
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        return responses

    async def handle_RCPT(
        self,
        server: Connection,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        config = self.config
        if len(envelope.rcpt_tos) >= config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if not config.tokens.is_ours(address):
            log.info(
                "refused rcpt=<%s> from=<%s> peer=%s: not a support address",
                address,
                envelope.mail_from,
                server.peer_text,
            )
            return replies.no_such_mailbox(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(
        self, server: Connection, session: SmtpSession, envelope: SmtpEnvelope
    ) -> str:
        raw = envelope.original_content or b""
        started = time.monotonic()
        reply = header_problem(raw)
        outcome: Outcome | None = None
        queue_id = new_queue_id()
        if reply is None:
            server.ingesting = True  # time spent committing is ours, not the client's: no timeouts
            try:
                outcome = await self.ingest.submit(raw, *self._envelope(server, session, envelope))
                reply = replies.success_reply(outcome, queue_id)
            except StorageUnavailable as exc:
                log.error("storage unavailable, answering 451: %s", exc)
                reply = replies.STORAGE_FAILURE
            except Exception:  # anything else: the bytes are not safe either, the sender keeps them
                log.exception("ingest failed unexpectedly, answering 451")
                reply = replies.LOCAL_ERROR
            finally:
                server.ingesting = False
                server.touch()
        self._log(server, envelope, raw, reply, outcome, queue_id, time.monotonic() - started)
        return server.per_recipient(reply)

    def _envelope(
        self, server: Connection, session: SmtpSession, env: SmtpEnvelope
    ) -> tuple[Envelope, Source]:
        envelope = Envelope(
            mail_from="" if env.mail_from == "<>" else env.mail_from,
            rcpt_tos=tuple(env.rcpt_tos),
            auth_user=session.auth_data if session.authenticated else None,
            peer=server.peer_text,
            trusted_peer=server.trusted_under(self.config),
        )
        return envelope, Source(self.config.mode, self.config.listen)

    @staticmethod
    def _log(
        server: Connection,
        env: SmtpEnvelope,
        raw: bytes,
        reply: str,
        outcome: Outcome | None,
        queue_id: str,
        seconds: float,
    ) -> None:
        verdict = "accepted" if replies.accepted(reply) else "refused"
        detail = (
            f" queue_id={queue_id} {outcome.outcome} ticket={outcome.ticket}" if outcome else ""
        )
        if outcome and outcome.reason:  # ingest logs SMTP outcomes at DEBUG: this is the line
            detail += f" reason={outcome.reason}"
        log.info(
            "%s from=<%s> rcpt=%s size=%d peer=%s%s: %s (%.0f ms)%s",
            verdict,
            "" if env.mail_from == "<>" else env.mail_from,
            ",".join(f"<{r}>" for r in env.rcpt_tos),
            len(raw),
            server.peer_text,
            detail,
            reply,
            seconds * 1000,
            WORKER_LABEL,
        )

    # --- AUTH: aiosmtpd's mechanism hooks (auth_<MECHANISM> on the handler, which replace its
    # built-ins): the same exchange, with the hash checked off the event loop and failures limited

    async def auth_PLAIN(self, server: Connection, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob: object = await server.challenge_auth("")  # bytes, MISSING, or None below
            if blob is MISSING:
                return AuthResult(success=False)  # challenge_auth has replied already
        else:
            blob = _b64decode(args[1])
            if blob is None:
                await server.push(replies.CANNOT_DECODE)
                return AuthResult(success=False)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # authzid NUL authcid NUL password (RFC 4616)
            await server.push(replies.CANNOT_SPLIT)
            return AuthResult(success=False)
        return await self._check_login(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: Connection, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login: object = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            login = _b64decode(args[1])
            if login is None:
                await server.push(replies.CANNOT_DECODE)
                return AuthResult(success=False)
        if login is MISSING:
            return AuthResult(success=False)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_login(server, "LOGIN", login, password)

    async def _check_login(
        self, server: Connection, mechanism: str, login_bytes: bytes, password_bytes: bytes
    ) -> AuthResult:
        config = self.config  # the current users file and limits, even after a reload
        try:
            login, password = login_bytes.decode(), password_bytes.decode()
        except UnicodeDecodeError:
            login, password = "", ""
        keys = auth_keys(server.client, login)
        throttle = self.throttle
        if not throttle.begin(keys, config.auth_max_failures, config.auth_lockout):
            # no hash is computed for a locked-out key: guessing then costs us nothing
            log.debug(
                "auth %s refused login=%s peer=%s: locked out",
                mechanism,
                replies.clean(login, 64),
                server.peer_text,
            )
            # answered slowly too, so a locked-out guesser cannot spin on cheap refusals
            await asyncio.sleep(auth_delay(config.auth_max_failures))
            return AuthResult(success=False, handled=False, message=replies.AUTH_LOCKED)
        ok = False
        try:
            if config.users is not None and login:
                ok = await config.users.verify_async(login, password)
        finally:
            if ok:
                throttle.succeeded(keys)
            else:
                delay, locked = throttle.failed(keys, config.auth_max_failures, config.auth_lockout)
        if ok:
            log.info("auth %s ok login=%s peer=%s", mechanism, login, server.peer_text)
            return AuthResult(success=True, auth_data=login.lower())
        log.warning(
            "auth %s failed login=%s peer=%s", mechanism, replies.clean(login, 64), server.peer_text
        )
        if self.metrics is not None:
            self.metrics.smtp_auth_failure()
        for scope, value in locked:
            log.warning(
                "auth lockout %s=%s for %.0fs after %d failed logins (last from %s)",
                scope,
                replies.clean(value, 64),
                config.auth_lockout,
                config.auth_max_failures,
                server.peer_text,
            )
            if self.metrics is not None:
                self.metrics.smtp_auth_lockout(scope)
        await asyncio.sleep(delay)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8


register(Handler)  # one Handler's hooks are its class's: aiosmtpd's discovery is cached


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None
