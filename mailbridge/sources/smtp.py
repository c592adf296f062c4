"""The SMTP and LMTP listener: an aiosmtpd handler onto `Ingestor.accept`. The only module with SMTP codes.

Like a Postfix receiver it only strips the protocol and sanity-checks (recipients, size, line
length, header count, connections per client); everything else is ingest's job. The reply *is*
the durability promise: `250` only after the transaction holding the raw bytes committed,
`451 4.3.0` when they could not be stored, so the sending MTA keeps the mail and retries.

One handler serves both protocols; LMTP differs only in the greeting (LHLO) and in answering the
end of DATA once per accepted recipient. Blocking work (ingest, password hashing) runs in the
event loop's default executor, so one slow commit never stalls the other sessions; messages that
arrive while a commit runs share the next one (GroupCommit).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from mailbridge.auth_users import Users, load_users
from mailbridge.correlate import Tokens
from mailbridge.envelope import Envelope, Outcome, Source, peer_trusted
from mailbridge.errors import ConfigError, StorageUnavailable
from mailbridge.ingest import Ingestor

log = logging.getLogger("mailbridge.smtp")

LINE_LENGTH_LIMIT = 8192  # RFC 5321 says 1000; we are the last hop, so only bound memory per line
MAX_HEADER_FIELDS = 1000
MAX_RECEIVED = 100  # RFC 5321 6.3: a message with this many hops is looping
AUTH_FAILURE_DELAY = 1.0  # seconds: slows password guessing without holding a thread
SHUTDOWN_GRACE = 30.0  # seconds for in-flight transactions to finish on SIGTERM
DRAIN_POLL = 0.05
MAX_BATCH = 32  # messages per group commit: bounds the wait of the first in a batch

# LHLO is LMTP's EHLO; aiosmtpd's list of commands allowed before STARTTLS forgets it
aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS.add("LHLO")

_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
# aiosmtpd's replies at the end of DATA: LMTP owes one per recipient there
_DATA_PHASE_REPLIES = frozenset({"552 Error: Too much mail data", _LINE_TOO_LONG})
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # a header field's name and colon (RFC 5322 2.2)
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class ListenerConfig:
    """Everything a session reads from settings, built once per (re)load and swapped whole."""

    listen: str
    mode: str  # smtp | lmtp
    hostname: str
    trusted_peers: tuple[str, ...]
    tokens: Tokens
    max_recipients: int
    max_message_size: int
    max_connections_per_client: int
    timeout: float
    tls: ssl.SSLContext | None
    require_tls: bool
    users: Users | None
    auth_require_tls: bool

    @classmethod
    def from_settings(cls, settings: Any) -> ListenerConfig:
        """Raises ConfigError when the TLS files or the users file cannot be loaded."""
        smtp = settings.smtp
        return cls(
            listen=smtp.listen,
            mode=smtp.mode,
            hostname=smtp.hostname or socket.gethostname(),
            trusted_peers=smtp.trusted_peers,
            tokens=Tokens(settings.accepted_addresses, settings.tickets.plus_separator),
            max_recipients=smtp.max_recipients,
            max_message_size=smtp.max_message_size,
            max_connections_per_client=smtp.max_connections_per_client,
            timeout=smtp.timeout.total_seconds(),
            tls=_tls_context(smtp.tls_cert, smtp.tls_key),
            require_tls=smtp.require_tls,
            users=load_users(smtp.auth_users_file) if smtp.auth_users_file else None,
            auth_require_tls=smtp.auth_require_tls,
        )


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    # CLIENT_AUTH: the server side; senders present no certificate, and none is asked for
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{cert}:1: smtp.tls_cert: cannot load certificate/key: {exc}"]) from exc
    return context


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
            return f"552 5.3.4 Too many header fields (limit {MAX_HEADER_FIELDS})"
        if received > MAX_RECEIVED:
            return f"554 5.4.6 Too many Received headers ({received}): mail loop?"
    return None


def _clean(text: str, limit: int = 120) -> str:
    """Text safe to echo in a reply: printable ASCII only, bounded."""
    return _UNPRINTABLE.sub("?", text)[:limit]


def success_reply(outcome: Outcome) -> str:
    """Every outcome is a 250: we hold the bytes, whatever ingest decided about them."""
    if outcome.outcome in ("created", "appended") and outcome.ticket:
        return f"250 2.0.0 queued as #{outcome.ticket}"
    if outcome.outcome == "duplicate":
        return "250 2.0.0 already received"
    return "250 2.0.0 accepted"  # ignored or quarantined: the sender learns nothing more


class GroupCommit:
    """Hands messages to `Ingestor.accept_many` in batches: one commit for all that arrived together.

    Zero added latency: a batch is whatever queued while the previous commit ran, so a lone message
    goes straight through, and under load a commit (and on SQLite the single write lock) is shared.
    Each message's reply still waits for the commit that holds it. `workers` batches commit at
    once: 1 for SQLite, whose writers queue on one lock anyway (several threads would only sleep in
    its busy handler), more for PostgreSQL.
    """

    def __init__(self, ingestor: Ingestor, workers: int = 1, max_batch: int = MAX_BATCH) -> None:
        self.ingestor = ingestor
        self.workers = max(1, workers)
        self.max_batch = max_batch
        self.pending: list[tuple[bytes, Envelope, Source, asyncio.Future[Outcome]]] = []
        self.in_flight = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Commit what is queued, then end the workers."""
        while self.pending or self.in_flight:
            await asyncio.sleep(DRAIN_POLL)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, raw: bytes, envelope: Envelope, source: Source) -> Outcome:
        """The outcome once committed; raises StorageUnavailable if the bytes could not be stored."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((raw, envelope, source, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            if not self.pending:
                self._wakeup.clear()
            if not batch:
                continue
            self.in_flight += 1
            try:
                results = await asyncio.to_thread(self._commit, [item[:3] for item in batch])
            finally:
                self.in_flight -= 1
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away; its mail is stored all the same
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _commit(self, items: list[tuple[bytes, Envelope, Source]]) -> list[Outcome | BaseException]:
        try:
            return list(self.ingestor.accept_many(items))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        # the batch could not commit as a whole: each message gets its own answer (a message
        # that did commit on the way comes back as a duplicate, which is still a 250)
        results: list[Outcome | BaseException] = []
        for item in items:
            try:
                results.append(self.ingestor.accept(*item))
            except Exception as exc:
                results.append(exc)
        return results


class Handler:
    """aiosmtpd hooks. Each returns the wire status; the config is swapped whole on reload."""

    def __init__(self, ingest: GroupCommit, config: ListenerConfig) -> None:
        self.ingest = ingest
        self.config = config

    async def handle_EHLO(
        self,
        server: Connection,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        if self.config.users is None:  # nobody can log in: do not offer AUTH
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
            return "452 4.5.3 Too many recipients"
        if not config.tokens.is_ours(address):
            log.info(
                "refused rcpt=<%s> from=<%s> peer=%s: not a support address",
                address,
                envelope.mail_from,
                server.peer_text,
            )
            return f"550 5.1.1 <{_clean(address)}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: Connection, session: SmtpSession, envelope: SmtpEnvelope
    ) -> str:
        raw = envelope.original_content or b""
        started = time.monotonic()
        reply = header_problem(raw)
        outcome: Outcome | None = None
        if reply is None:
            server.ingesting = True
            server.touch()  # the idle timer restarts: time spent committing is ours, not the client's
            try:
                outcome = await self.ingest.submit(raw, *self._envelope(server, session, envelope))
                reply = success_reply(outcome)
            except StorageUnavailable as exc:
                log.error("storage unavailable, answering 451: %s", exc)
                reply = "451 4.3.0 Temporary storage failure, please try again later"
            except Exception:  # anything else: the bytes are not safe either, the sender keeps them
                log.exception("ingest failed unexpectedly, answering 451")
                reply = "451 4.3.0 Temporary local error, please try again later"
            finally:
                server.ingesting = False
        self._log(server, envelope, raw, reply, outcome, time.monotonic() - started)
        return server.per_recipient(reply)

    def _envelope(
        self, server: Connection, session: SmtpSession, env: SmtpEnvelope
    ) -> tuple[Envelope, Source]:
        envelope = Envelope(
            mail_from="" if env.mail_from == "<>" else env.mail_from,
            rcpt_tos=tuple(env.rcpt_tos),
            auth_user=session.auth_data if session.authenticated else None,
            peer=server.peer_text,
            trusted_peer=peer_trusted(session.peer, self.config.trusted_peers),
        )
        return envelope, Source(self.config.mode, self.config.listen)

    @staticmethod
    def _log(
        server: Connection,
        env: SmtpEnvelope,
        raw: bytes,
        reply: str,
        outcome: Outcome | None,
        seconds: float,
    ) -> None:
        verdict = "accepted" if reply.startswith("250") else "refused"
        detail = f" {outcome.outcome} ticket={outcome.ticket}" if outcome else ""
        log.info(
            "%s from=<%s> rcpt=%s size=%d peer=%s%s: %s (%.0f ms)",
            verdict,
            "" if env.mail_from == "<>" else env.mail_from,
            ",".join(f"<{r}>" for r in env.rcpt_tos),
            len(raw),
            server.peer_text,
            detail,
            reply,
            seconds * 1000,
        )


class Connection(SMTP):
    """One client connection: aiosmtpd's protocol plus our limits, login check and clean shutdown."""

    line_length_limit = LINE_LENGTH_LIMIT

    def __init__(self, listener: SmtpListener, config: ListenerConfig) -> None:
        super().__init__(
            listener.handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,  # customers with non-ASCII addresses must reach support too
            hostname=config.hostname,
            ident=f"mailbridge {config.mode.upper()}",
            tls_context=config.tls,
            require_starttls=config.require_tls,
            timeout=config.timeout,
            auth_require_tls=config.auth_require_tls,
            loop=asyncio.get_running_loop(),
        )
        self.listener = listener
        self.config = config
        self.peer_text = "?"
        self.client: str | None = None  # the key the per-client connection limit counts under
        self.refused = False
        self.ingesting = False
        too_big = f"552 5.3.4 Message too big (limit {config.max_message_size} bytes)"
        self._replies = {
            "552 Error: Too much mail data": too_big,
            "552 Error: message size exceeds fixed maximum message size": too_big,
            _LINE_TOO_LONG: f"500 5.6.0 Line too long (limit {LINE_LENGTH_LIMIT} octets)",
            "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
        }

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # a new connection, not the TLS layer after STARTTLS
            peer = transport.get_extra_info("peername")
            self.peer_text, self.client, loopback = _describe_peer(peer)
            # cleartext AUTH, when allowed at all, only for clients on this host
            self._auth_require_tls = self.config.auth_require_tls or not loopback
            if not self.listener.admit(self):
                self.refused = True
                log.warning("refused connection from %s: too many connections", self.peer_text)
                transport.write(b"421 4.7.0 Too many connections from your address, try later\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.listener.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        return False if self.refused else super().eof_received()

    def touch(self) -> None:
        self._reset_timeout()

    @property
    def busy(self) -> bool:
        """Inside a mail transaction (after MAIL, through DATA, until its reply): finish it on stop."""
        return self.ingesting or (self.envelope is not None and self.envelope.mail_from is not None)

    def shut(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if abort:
            transport.abort()  # type: ignore[attr-defined]
            return
        transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")  # type: ignore[attr-defined]
        transport.close()

    # --- replies -------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd's own replies carry no enhanced status codes; a few matter to senders
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        replacement = self._replies.get(text)
        if replacement is None:
            await super().push(status)
            return
        if text in _DATA_PHASE_REPLIES:
            replacement = self.per_recipient(replacement)
        await super().push(replacement)

    def per_recipient(self, reply: str) -> str:
        """SMTP answers the end of DATA once; LMTP once per accepted recipient (RFC 2033 4.2)."""
        return reply

    # --- AUTH: like aiosmtpd's built-ins, but the password hash is checked off the event loop ---

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)  # challenge_auth has replied already
        else:
            blob = _b64decode(args[1])
            if blob is None:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # authzid NUL authcid NUL password (RFC 4616)
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False)
        return await self._check_login("PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
        else:
            login = _b64decode(args[1])
            if login is None:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False)
        if login is MISSING:
            return AuthResult(success=False)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check_login("LOGIN", login, password)

    async def _check_login(
        self, mechanism: str, login_bytes: bytes, password_bytes: bytes
    ) -> AuthResult:
        users = self.listener.handler.config.users  # the current file, even after a reload
        try:
            login, password = login_bytes.decode(), password_bytes.decode()
        except UnicodeDecodeError:
            login, password = "", ""
        ok = False
        if users is not None and login:
            ok = await asyncio.to_thread(users.verify, login, password)
        if ok:
            log.info("auth %s ok login=%s peer=%s", mechanism, login, self.peer_text)
            return AuthResult(success=True, auth_data=login.lower())
        log.warning("auth %s failed login=%s peer=%s", mechanism, _clean(login, 64), self.peer_text)
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8


class LmtpConnection(LMTP, Connection):
    """LMTP: LHLO instead of EHLO, and one reply per recipient at the end of DATA."""

    def per_recipient(self, reply: str) -> str:
        assert self.envelope is not None
        recipients = self.envelope.rcpt_tos or [""]
        code, _, text = reply.partition(" ")
        return "\r\n".join(f"{code} {text} <{_clean(r)}>" if r else reply for r in recipients)


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _describe_peer(peer: Any) -> tuple[str, str | None, bool]:
    """(text for logs and the envelope, key for the per-client limit or None, is it loopback)."""
    if not isinstance(peer, tuple) or not peer:  # a Unix socket: local by definition
        return "unix", None, True
    host, port = str(peer[0]), peer[1]
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return text, host, loopback


class SmtpListener:
    """The listener as a daemon Component: start listening, reload settings, drain on stop."""

    name = "smtp"

    def __init__(
        self,
        ingestor: Ingestor,
        settings: Any,
        ingest_workers: int = 1,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ) -> None:
        ingest = GroupCommit(ingestor, ingest_workers)
        self.handler = Handler(ingest, ListenerConfig.from_settings(settings))
        self.endpoint: tuple[str, int] | Path = settings.smtp.endpoint
        self.shutdown_grace = shutdown_grace
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[Connection] = set()
        self.per_client: Counter[str] = Counter()

    @property
    def config(self) -> ListenerConfig:
        return self.handler.config

    # --- Component -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.handler.ingest.start()
        if isinstance(self.endpoint, Path):
            _clear_stale_socket(self.endpoint)
            self.server = await loop.create_unix_server(self._new_session, path=str(self.endpoint))
            # like a TCP port on 127.0.0.1, any local user may connect; restrict via the directory
            os.chmod(self.endpoint, 0o666)
        else:
            host, port = self.endpoint
            self.server = await loop.create_server(
                self._new_session, host, port, reuse_address=True
            )
        log.info("listening for %s on %s", self.config.mode.upper(), self.config.listen)

    async def stop(self) -> None:
        """Stop accepting, finish transactions in flight (bounded), then close every connection."""
        if self.server is None:
            return
        self.server.close()  # no new connections from here on
        deadline = time.monotonic() + self.shutdown_grace
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if not session.busy:
                    session.shut()
            await asyncio.sleep(DRAIN_POLL)
        if self.sessions:
            log.warning(
                "aborting %d session(s) still busy after %.0fs",
                len(self.sessions),
                self.shutdown_grace,
            )
            for session in list(self.sessions):
                session.shut(abort=True)
        await self.server.wait_closed()
        await self.handler.ingest.stop()
        if isinstance(self.endpoint, Path):
            self.endpoint.unlink(missing_ok=True)
        self.server = None
        log.info("listener on %s stopped", self.config.listen)

    def reload(self, settings: Any) -> None:
        """New addresses, limits, TLS files and users apply to the next command; sessions stay up."""
        config = ListenerConfig.from_settings(settings)  # raises before anything changes
        if (config.listen, config.mode) != (self.config.listen, self.config.mode):
            log.warning("smtp.listen/mode changed: takes effect at the next restart")
            config = _keep_endpoint(config, self.config)
        self.handler.config = config

    # --- sessions ------------------------------------------------------------------------

    def _new_session(self) -> Connection:
        config = self.config
        kind = LmtpConnection if config.mode == "lmtp" else Connection
        return kind(self, config)

    def admit(self, session: Connection) -> bool:
        if session.client is not None:
            if self.per_client[session.client] >= self.config.max_connections_per_client:
                return False
            self.per_client[session.client] += 1
        self.sessions.add(session)
        return True

    def release(self, session: Connection) -> None:
        if session not in self.sessions:
            return  # connection_lost twice (TLS teardown): count it once
        self.sessions.discard(session)
        if session.client is not None:
            self.per_client[session.client] -= 1
            if self.per_client[session.client] <= 0:
                del self.per_client[session.client]


def _keep_endpoint(new: ListenerConfig, old: ListenerConfig) -> ListenerConfig:
    return replace(new, listen=old.listen, mode=old.mode)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a crashed run; refuse if another process still listens on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody answers: left over from an earlier run
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")
