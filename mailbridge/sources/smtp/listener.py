"""The SMTP and LMTP listener: an aiosmtpd handler onto `Ingestor.accept`. The only module with SMTP codes.

Like a Postfix receiver it only strips the protocol and sanity-checks (recipients, size, line
length, header count, connections per client); everything else is ingest's job. The reply *is*
the durability promise: `250` only after the transaction holding the raw bytes committed,
`451 4.3.0` when they could not be stored, so the sending MTA keeps the mail and retries.

One handler serves both protocols; LMTP differs only in the greeting (LHLO) and in answering the
end of DATA once per accepted recipient. Ingest runs in the event loop's default executor and
password hashing on a thread of its own, so one slow commit never stalls the other sessions;
messages that arrive while a commit runs share the next one (GroupCommit).

Limits against a client on the open Internet: connections in total and per client (an IPv4
address, or an IPv6 /64, what one host usually gets), an idle timeout plus a DATA deadline that
grows with the bytes received, and failed logins slowed down, then locked out for a while.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import grp
import ipaddress
import logging
import os
import re
import resource
import secrets
import socket
import ssl
import stat
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from mailbridge.ingest.pool import ParsePool, ParseResult
from mailbridge.sources.smtp.fast import FastSMTP, register

if TYPE_CHECKING:
    from mailbridge.metrics import Metrics

log = logging.getLogger("mailbridge.smtp")

LINE_LENGTH_LIMIT = 8192  # RFC 5321 says 1000; we are the last hop, so only bound memory per line
MAX_HEADER_FIELDS = 1000
MAX_RECEIVED = 100  # RFC 5321 6.3: a message with this many hops is looping
AUTH_FAILURE_DELAY = 1.0  # seconds after the first failure, doubling with each further one
AUTH_MAX_DELAY = 8.0
AUTH_TRACKED = 50_000  # clients and logins with recent failures remembered (bounds memory)
ACCEPT_REPORT_EVERY = 60.0  # seconds: at most one "cannot accept" line per run of failures
FD_RESERVE = 256  # descriptors beside the SMTP sessions: database, IMAP, outbox, refused sockets
SHUTDOWN_GRACE = 30.0  # seconds for in-flight transactions to finish on SIGTERM
DRAIN_POLL = 0.05
MAX_BATCH = 32  # messages per group commit: bounds the wait of the first in a batch
WORKER_LABEL = ""  # " worker=N" in each per-message line when [smtp] workers > 1

# LHLO is LMTP's EHLO; aiosmtpd's list of commands allowed before STARTTLS forgets it
aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS.add("LHLO")

_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
# aiosmtpd's replies at the end of DATA: LMTP owes one per recipient there
_DATA_PHASE_REPLIES = frozenset({"552 Error: Too much mail data", _LINE_TOO_LONG})
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # a header field's name and colon (RFC 5322 2.2)
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's message, then a traceback


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
    max_connections: int
    timeout: float  # idle: no bytes from the client
    data_timeout: float
    data_min_rate: int  # bytes per second, on top of data_timeout
    auth_max_failures: int
    auth_lockout: float
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
            tokens=settings.addressing.tokens,
            max_recipients=smtp.max_recipients,
            max_message_size=smtp.max_message_size,
            max_connections_per_client=smtp.max_connections_per_client,
            max_connections=smtp.max_connections,
            timeout=smtp.timeout.total_seconds(),
            data_timeout=smtp.data_timeout.total_seconds(),
            data_min_rate=smtp.data_min_rate,
            auth_max_failures=smtp.auth_max_failures,
            auth_lockout=smtp.auth_lockout.total_seconds(),
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


def new_queue_id() -> str:
    """A random id for one accepted message: quoted in the 250 and logged beside the ticket."""
    return secrets.token_hex(5).upper()


def success_reply(outcome: Outcome, queue_id: str) -> str:
    """Every outcome is a 250: we hold the bytes, whatever ingest decided about them.

    The reply names a queue id, never the ticket: ticket numbers are sequential and a subject tag
    is enough to reach a ticket, so a stranger must not learn them. Created, appended, ignored
    and quarantined read the same, so the sender learns nothing about what ingest decided.
    """
    if outcome.outcome == "duplicate":
        return "250 2.0.0 already received"
    return f"250 2.0.0 Ok: queued as {queue_id}"


AUTH_LOCKED = "454 4.7.0 Too many failed logins, try again later"


def auth_keys(client: str | None, login: str) -> list[tuple[str, str]]:
    """What failed logins count against: the client's bucket (none on a Unix socket) and the login."""
    keys = [("client", client)] if client is not None else []
    login = login.strip().lower()[:255]  # unknown logins too, so a lockout reveals no login
    return [*keys, ("login", login)] if login else keys


@dataclass
class _Strikes:
    failures: int = 0  # attempts still being checked count already, so parallel guesses stop too
    last: float = 0.0
    locked_until: float = 0.0


class AuthThrottle:
    """Failed logins per key: each answered later than the last, then a lockout refusing every try.

    A key's failures are forgotten `lockout` seconds after its last one, or when its lockout ends.
    """

    def __init__(self, clock: Any = time.monotonic, tracked: int = AUTH_TRACKED) -> None:
        self.clock = clock
        self.tracked = tracked
        self.strikes: dict[tuple[str, str], _Strikes] = {}

    def _get(self, key: tuple[str, str], now: float, lockout: float) -> _Strikes | None:
        entry = self.strikes.get(key)
        if entry is None:
            return None
        ended = now >= entry.locked_until if entry.locked_until else now - entry.last >= lockout
        if ended:
            del self.strikes[key]
            return None
        return entry

    def begin(self, keys: list[tuple[str, str]], max_failures: int, lockout: float) -> bool:
        """Count an attempt against every key; False (and nothing counted) if one is locked out."""
        now = self.clock()
        entries = [self._get(key, now, lockout) for key in keys]
        if any(e is not None and e.failures >= max_failures for e in entries):
            return False
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                entry = self.strikes[key] = _Strikes()
            entry.failures += 1
            entry.last = now
        if len(self.strikes) > self.tracked:  # a flood of fresh keys: forget the oldest
            for key in list(self.strikes)[: len(self.strikes) - self.tracked]:
                del self.strikes[key]
        return True

    def succeeded(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            entry = self.strikes.get(key)
            if entry is None:
                continue
            if key[0] == "login":
                del self.strikes[key]  # the agent knows the password: earlier typos are forgiven
            else:
                entry.failures -= 1  # only this attempt: one valid login must not clear a guesser

    def failed(
        self, keys: list[tuple[str, str]], max_failures: int, lockout: float
    ) -> tuple[float, list[tuple[str, str]]]:
        """The delay before answering 535, and the keys this failure has just locked out."""
        now = self.clock()
        worst, locked = 1, []
        for key in keys:
            entry = self.strikes.get(key)
            if entry is None:
                continue
            entry.last = now
            worst = max(worst, entry.failures)
            if entry.failures >= max_failures and not entry.locked_until:
                entry.locked_until = now + lockout
                locked.append(key)
        return _auth_delay(worst), locked


def _auth_delay(failures: int) -> float:
    """Seconds before answering a failed login: doubling with the failures, up to a cap."""
    return min(AUTH_FAILURE_DELAY * 2 ** min(failures - 1, 16), AUTH_MAX_DELAY)


class GroupCommit:
    """Hands messages to `Ingestor.accept_many` in batches: one commit for all that arrived together.

    Zero added latency: a batch is whatever queued while the previous commit ran, so a lone message
    goes straight through, and under load a commit (and on SQLite the single write lock) is shared.
    Each message's reply still waits for the commit that holds it. `workers` batches commit at
    once: 1 for SQLite, whose writers queue on one lock anyway (several threads would only sleep in
    its busy handler), more for PostgreSQL.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        workers: int = 1,
        max_batch: int = MAX_BATCH,
        parser: ParsePool | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.workers = max(1, workers)
        self.max_batch = max_batch
        self.parser = parser
        self.pending: list[
            tuple[bytes, Envelope, Source, ParseResult | None, asyncio.Future[Outcome]]
        ] = []
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
        # parsed by a worker process before it queues, so a slow parse holds neither the event
        # loop nor the commit of other mail (small mail is parsed in the commit thread)
        parsed = await self.parser.parse_async(raw) if self.parser else None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((raw, envelope, source, parsed, future))
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
                results = await asyncio.to_thread(self._commit, [item[:4] for item in batch])
            finally:
                self.in_flight -= 1
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away; its mail is stored all the same
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _commit(
        self, items: list[tuple[bytes, Envelope, Source, ParseResult | None]]
    ) -> list[Outcome | BaseException]:
        try:
            return list(self.ingestor.accept_many([i[:3] for i in items], [i[3] for i in items]))
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

    def __init__(
        self, ingest: GroupCommit, config: ListenerConfig, metrics: Metrics | None = None
    ) -> None:
        self.ingest = ingest
        self.config = config
        self.metrics = metrics
        self.auth_throttle = AuthThrottle()  # outlives reloads: a reload must not reset lockouts

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
        queue_id = new_queue_id()
        if reply is None:
            server.ingesting = True  # time spent committing is ours, not the client's: no timeouts
            try:
                outcome = await self.ingest.submit(raw, *self._envelope(server, session, envelope))
                reply = success_reply(outcome, queue_id)
            except StorageUnavailable as exc:
                log.error("storage unavailable, answering 451: %s", exc)
                reply = "451 4.3.0 Temporary storage failure, please try again later"
            except Exception:  # anything else: the bytes are not safe either, the sender keeps them
                log.exception("ingest failed unexpectedly, answering 451")
                reply = "451 4.3.0 Temporary local error, please try again later"
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
        queue_id: str,
        seconds: float,
    ) -> None:
        verdict = "accepted" if reply.startswith("250") else "refused"
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
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # authzid NUL authcid NUL password (RFC 4616)
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False)
        return await self._check_login(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: Connection, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login: object = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            login = _b64decode(args[1])
            if login is None:
                await server.push("501 5.5.2 Can't decode base64")
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
        throttle = self.auth_throttle
        if not throttle.begin(keys, config.auth_max_failures, config.auth_lockout):
            # no hash is computed for a locked-out key: guessing then costs us nothing
            log.debug(
                "auth %s refused login=%s peer=%s: locked out",
                mechanism,
                _clean(login, 64),
                server.peer_text,
            )
            # answered slowly too, so a locked-out guesser cannot spin on cheap refusals
            await asyncio.sleep(_auth_delay(config.auth_max_failures))
            return AuthResult(success=False, handled=False, message=AUTH_LOCKED)
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
            "auth %s failed login=%s peer=%s", mechanism, _clean(login, 64), server.peer_text
        )
        if self.metrics is not None:
            self.metrics.smtp_auth_failure()
        for scope, value in locked:
            log.warning(
                "auth lockout %s=%s for %.0fs after %d failed logins (last from %s)",
                scope,
                _clean(value, 64),
                config.auth_lockout,
                config.auth_max_failures,
                server.peer_text,
            )
            if self.metrics is not None:
                self.metrics.smtp_auth_lockout(scope)
        await asyncio.sleep(delay)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8


register(Handler)  # one Handler's hooks are its class's: aiosmtpd's discovery is cached


class Connection(FastSMTP):
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
            # aiosmtpd's own timer runs from each command, so it would cut a long DATA: it is set
            # beyond anything our watchdog allows, which then decides alone
            timeout=config.timeout + _longest_data(config) + 3600,
            auth_require_tls=config.auth_require_tls,
            loop=asyncio.get_running_loop(),
        )
        self.listener = listener
        self.config = config
        self.peer_text = "?"
        self.client: str | None = None  # the bucket per-client limits count under
        self.refused = False
        self.started = False
        self.ingesting = False
        self.last_bytes = self.loop.time()
        self.data_started: float | None = None  # inside DATA, until the end-of-data dot
        self.data_bytes = 0
        self.watchdog: asyncio.TimerHandle | None = None
        too_big = f"552 5.3.4 Message too big (limit {config.max_message_size} bytes)"
        self._replies = {
            "552 Error: Too much mail data": too_big,
            "552 Error: message size exceeds fixed maximum message size": too_big,
            _LINE_TOO_LONG: f"500 5.6.0 Line too long (limit {LINE_LENGTH_LIMIT} octets)",
            "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
        }

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.started:  # a new connection, not the TLS layer after STARTTLS
            self.started = True
            peer = transport.get_extra_info("peername")
            self.peer_text, self.client, loopback = _describe_peer(peer)
            # cleartext AUTH, when allowed at all, only for clients on this host
            _require_tls_for_auth(self, self.config.auth_require_tls or not loopback)
            refusal = self.listener.admit(self)
            if refusal is not None:
                self.refused = True
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self.touch()
            self.watchdog = self.loop.call_later(self.config.timeout, self._check_time)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.listener.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        return False if self.refused else super().eof_received()

    def data_received(self, data: bytes) -> None:
        # the clock the timeouts read: any byte, even part of a line, shows the client is there
        self.last_bytes = self.loop.time()
        self.data_bytes += len(data)
        super().data_received(data)

    def touch(self) -> None:
        self.last_bytes = self.loop.time()

    async def smtp_DATA(self, arg: str) -> None:
        self.data_started, self.data_bytes = self.loop.time(), 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self.data_started = None

    def _check_time(self) -> None:
        """The watchdog: close a client silent for `timeout`, or too slow to finish its DATA."""
        now = self.loop.time()
        config = self.config
        if self.ingesting:  # the client waits for our commit: not its silence
            self.last_bytes = now
        deadline, reason = self.last_bytes + config.timeout, "idle timeout"
        if self.data_started is not None and not self.ingesting:
            # a steady sender of a large mail may take long; one that stalls or trickles may not
            allowed = config.data_timeout + self.data_bytes / config.data_min_rate
            if self.data_started + allowed < deadline:
                deadline, reason = self.data_started + allowed, "DATA too slow"
        if now < deadline:
            self.watchdog = self.loop.call_at(deadline, self._check_time)
            return
        log.info("closing %s: %s", self.peer_text, reason)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())  # type: ignore[attr-defined]
            transport.close()

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
            await super().push(status)  # type: ignore[type-var]  # AnyStr: str or bytes, each fine
            return
        if text in _DATA_PHASE_REPLIES:
            replacement = self.per_recipient(replacement)
        await super().push(replacement)

    def per_recipient(self, reply: str) -> str:
        """SMTP answers the end of DATA once; LMTP once per accepted recipient (RFC 2033 4.2)."""
        return reply


class LmtpConnection(LMTP, Connection):
    """LMTP: LHLO instead of EHLO, and one reply per recipient at the end of DATA."""

    def per_recipient(self, reply: str) -> str:
        assert self.envelope is not None
        recipients = self.envelope.rcpt_tos or [""]
        code, _, text = reply.partition(" ")
        return "\r\n".join(f"{code} {text} <{_clean(r)}>" if r else reply for r in recipients)


def _longest_data(config: ListenerConfig) -> float:
    return config.data_timeout + config.max_message_size / config.data_min_rate


def _require_tls_for_auth(connection: SMTP, required: bool) -> None:
    """aiosmtpd decides per server object whether AUTH needs TLS; we decide per peer (cleartext
    only on loopback), known only once connected. Its one private attribute we set; pinned by
    test_aiosmtpd_private_attribute_we_set_still_exists."""
    connection._auth_require_tls = required


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _describe_peer(peer: Any) -> tuple[str, str | None, bool]:
    """(text for logs and the envelope, bucket for per-client limits or None, is it loopback)."""
    if not isinstance(peer, tuple) or not peer:  # a Unix socket: local by definition
        return "unix", None, True
    host, port = str(peer[0]), peer[1]
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return text, host, False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket: the client is an IPv4 one
    return text, client_bucket(address), address.is_loopback


def client_bucket(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4 address, or the IPv6 /64 around it: one host usually gets a whole /64 to roam."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class _AcceptErrors(logging.Filter):
    """One line when accept() starts failing and one when it works again, not asyncio's flood.

    asyncio logs every accept() that fails for want of descriptors, with a traceback, up to the
    backlog at a time, and retries a second later. Near the limit the state flaps as descriptors
    come and go, so a new run of failures is reported at most once a minute, with the count.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.failing = False
        self.reported = False  # this run of failures has been logged
        self.failures = 0  # since the last line
        self.next_report = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_ACCEPT_ERROR):
            return True
        self.failing = True
        self.failures += 1
        now = self.clock()
        if not self.reported and now >= self.next_report:
            self.reported, self.next_report = True, now + ACCEPT_REPORT_EVERY
            error = record.exc_info[1] if record.exc_info else None
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "cannot accept connections: %s (descriptor limit %d, %d failed accept()s);"
                " retrying every second",
                error or "out of system resources",
                soft,
                self.failures,
            )
        return False

    def recovered(self) -> None:
        if not self.failing:
            return
        self.failing = False
        if self.reported:
            self.reported = False
            log.warning("accepting connections again after %d failed accept()s", self.failures)
            self.failures = 0


_ACCEPT_ERRORS = _AcceptErrors()


def _fit_descriptors(max_connections: int) -> None:
    """Raise the soft descriptor limit toward the hard one so max_connections fit; warn if not."""
    needed = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "max_connections = %d needs about %d file descriptors but the limit is %d: "
            "raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections",
            max_connections,
            needed,
            soft,
        )


class SmtpListener:
    """The listener as a daemon Component: start listening, reload settings, drain on stop."""

    name = "smtp"

    def __init__(
        self,
        ingestor: Ingestor,
        settings: Any,
        ingest_workers: int = 1,
        shutdown_grace: float = SHUTDOWN_GRACE,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        parser: ParsePool | None = None,
    ) -> None:
        self.reuse_port = reuse_port  # several processes share the port ([smtp] workers)
        ingest = GroupCommit(ingestor, ingest_workers, parser=parser)
        self.handler = Handler(ingest, ListenerConfig.from_settings(settings), metrics)
        self.metrics = metrics
        self.endpoint: tuple[str, int] | Path = settings.smtp.endpoint
        self.socket_access = (int(settings.smtp.socket_mode, 8), settings.smtp.socket_group)
        self.shutdown_grace = shutdown_grace
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[Connection] = set()
        self.per_client: Counter[str] = Counter()
        self.full = False  # at max_connections: logged once when reached, once when it clears
        self.refusing: set[str] = set()  # clients at their limit that were refused, logged once

    @property
    def config(self) -> ListenerConfig:
        return self.handler.config

    # --- Component -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _fit_descriptors(self.config.max_connections)
        if _ACCEPT_ERRORS not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_ACCEPT_ERRORS)
        self.handler.ingest.start()
        if isinstance(self.endpoint, Path):
            _clear_stale_socket(self.endpoint)
            self.server = await loop.create_unix_server(self._new_session, path=str(self.endpoint))
            _restrict_socket(self.endpoint, *self.socket_access)
        else:
            host, port = self.endpoint
            self.server = await loop.create_server(
                self._new_session,
                host,
                port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
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
        if config.max_connections > self.config.max_connections:
            _fit_descriptors(config.max_connections)
        self.handler.config = config

    # --- sessions ------------------------------------------------------------------------

    def _new_session(self) -> Connection:
        config = self.config
        kind = LmtpConnection if config.mode == "lmtp" else Connection
        return kind(self, config)

    def admit(self, session: Connection) -> str | None:
        """None if the session may go on, else the 421 it gets before it is closed."""
        _ACCEPT_ERRORS.recovered()
        config, client = self.config, session.client
        # refusals are logged when a limit is first hit, not per connection: a flood would
        # otherwise write a line per attempt (the metric counts each one)
        if len(self.sessions) >= config.max_connections:
            if not self.full:
                self.full = True
                log.warning(
                    "max_connections = %d reached: refusing new connections (latest from %s)",
                    config.max_connections,
                    session.peer_text,
                )
            return self._refused("total", "421 4.7.0 Too many connections, try again later")
        if client is not None:
            if self.per_client[client] >= config.max_connections_per_client:
                if client not in self.refusing:
                    self.refusing.add(client)
                    log.warning(
                        "refusing connections from %s (%s): max_connections_per_client = %d",
                        client,
                        session.peer_text,
                        config.max_connections_per_client,
                    )
                return self._refused(
                    "client", "421 4.7.0 Too many connections from your address, try again later"
                )
            self.per_client[client] += 1
        self.sessions.add(session)
        return None

    def _refused(self, limit: str, reply: str) -> str:
        if self.metrics is not None:
            self.metrics.smtp_connection_refused(limit)
        return reply

    def release(self, session: Connection) -> None:
        if session not in self.sessions:
            return  # connection_lost twice (TLS teardown): count it once
        self.sessions.discard(session)
        if self.full and len(self.sessions) < self.config.max_connections:
            self.full = False
            log.info("below max_connections again: accepting new connections")
        client = session.client
        if client is not None:
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]
            if self.per_client[client] < self.config.max_connections_per_client:
                self.refusing.discard(client)


def _keep_endpoint(new: ListenerConfig, old: ListenerConfig) -> ListenerConfig:
    return replace(new, listen=old.listen, mode=old.mode)


def _restrict_socket(path: Path, mode: int, group: str | None) -> None:
    """Who may deliver over the Unix socket: its mode and group, set before READY is announced.

    Until then the socket has the umask's mode (0755 under the usual 022: only we can connect,
    since connecting needs write permission), so there is no moment open to every local user.
    """
    if group is not None:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, PermissionError) as exc:
            # a non-root daemon may only hand the socket to a group it is a member of
            raise OSError(
                f"cannot give {path} to group {group!r} (is this user a member of it?): {exc}"
            ) from exc
    os.chmod(path, mode)


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
