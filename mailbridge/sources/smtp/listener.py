"""The SMTP/LMTP listener as a daemon component: sockets, sessions, limits on connections, reload.

How the pieces fit, as in aiosmtpd (engine, handler, controller): `protocol.Connection` speaks
the protocol for one client, `handler.Handler` decides each reply and hands mail to ingest through
`commit.GroupCommit`, and `SmtpListener` here starts and stops the listening socket, counts
connections in total and per client, and swaps the `ListenerConfig` on reload. Every reply we
write is in `replies`; what aiosmtpd offers no public hook for is in `aiosmtpd_compat`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mailbridge.auth_users import Users, load_users
from mailbridge.correlate import Tokens
from mailbridge.errors import ConfigError
from mailbridge.ingest import Ingestor
from mailbridge.parse_pool import ParsePool
from mailbridge.sources.smtp import replies
from mailbridge.sources.smtp.commit import DRAIN_POLL, GroupCommit
from mailbridge.sources.smtp.handler import Handler
from mailbridge.sources.smtp.protocol import Connection, LmtpConnection
from mailbridge.sources.smtp.sockets import (
    ACCEPT_ERRORS,
    clear_stale_socket,
    fit_descriptors,
    restrict_socket,
)

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.metrics import Metrics

log = logging.getLogger("mailbridge.smtp")

SHUTDOWN_GRACE = 30.0  # seconds for in-flight transactions to finish on SIGTERM


@dataclass(frozen=True)
class ListenerConfig:
    """Everything a session reads from settings, built once per (re)load and swapped whole."""

    listen: str
    endpoint: tuple[str, int] | Path  # listen, parsed: host and port, or a Unix socket
    socket_mode: int  # a Unix socket's permissions and group, set once at start
    socket_group: str | None
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
    def from_settings(cls, settings: Settings) -> ListenerConfig:
        """Raises ConfigError when the TLS files or the users file cannot be loaded."""
        smtp = settings.smtp
        return cls(
            listen=smtp.listen,
            endpoint=smtp.endpoint,
            socket_mode=int(smtp.socket_mode, 8),
            socket_group=smtp.socket_group,
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


class SmtpListener:
    """The listener as a daemon Component: start listening, reload settings, drain on stop."""

    name = "smtp"

    def __init__(
        self,
        ingestor: Ingestor,
        config: ListenerConfig,
        ingest_workers: int = 1,
        shutdown_grace: float = SHUTDOWN_GRACE,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        parser: ParsePool | None = None,
    ) -> None:
        self.reuse_port = reuse_port  # several processes share the port ([smtp] workers)
        ingest = GroupCommit(ingestor, ingest_workers, parser=parser)
        self.handler = Handler(ingest, config, metrics)
        self.metrics = metrics
        self.endpoint = config.endpoint  # kept until a restart, as are the socket's mode and group
        self.socket_access = (config.socket_mode, config.socket_group)
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
        fit_descriptors(self.config.max_connections)
        if ACCEPT_ERRORS not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(ACCEPT_ERRORS)
        self.handler.ingest.start()
        if isinstance(self.endpoint, Path):
            clear_stale_socket(self.endpoint)
            self.server = await loop.create_unix_server(self._new_session, path=str(self.endpoint))
            restrict_socket(self.endpoint, *self.socket_access)
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

    def reload(self, settings: Settings) -> None:
        """New addresses, limits, TLS files and users apply to the next command; sessions stay up."""
        config = ListenerConfig.from_settings(settings)  # raises before anything changes
        if (config.listen, config.mode) != (self.config.listen, self.config.mode):
            log.warning("smtp.listen/mode changed: takes effect at the next restart")
            config = _keep_endpoint(config, self.config)
        if config.max_connections > self.config.max_connections:
            fit_descriptors(config.max_connections)
        self.handler.config = config

    # --- sessions ------------------------------------------------------------------------

    def _new_session(self) -> Connection:
        config = self.config
        kind = LmtpConnection if config.mode == "lmtp" else Connection
        return kind(self, config)

    def admit(self, session: Connection) -> str | None:
        """None if the session may go on, else the 421 it gets before it is closed."""
        ACCEPT_ERRORS.recovered()
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
            return self._refused("total", replies.TOO_MANY_CONNECTIONS)
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
                return self._refused("client", replies.TOO_MANY_FROM_CLIENT)
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
    return replace(new, listen=old.listen, endpoint=old.endpoint, mode=old.mode)
