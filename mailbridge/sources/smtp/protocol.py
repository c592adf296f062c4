"""One client connection: aiosmtpd's SMTP (or LMTP) protocol plus our limits and clean shutdown.

Limits against a client on the open Internet: an idle timeout plus a DATA deadline that grows
with the bytes received, long lines and oversized mail refused with enhanced status codes, and
the connection counted against the listener's totals (per client: an IPv4 address, or an IPv6
/64, what one host usually gets). LMTP differs from SMTP only in the greeting (LHLO) and in
answering the end of DATA once per accepted recipient.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from mailbridge.envelope import peer_trusted
from mailbridge.sources.smtp import replies
from mailbridge.sources.smtp.aiosmtpd_compat import FastSMTP, StockReply, stock_reply

if TYPE_CHECKING:
    from mailbridge.sources.smtp.listener import ListenerConfig, SmtpListener

log = logging.getLogger("mailbridge.smtp")

LINE_LENGTH_LIMIT = 8192  # RFC 5321 says 1000; we are the last hop, so only bound memory per line


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
            # aiosmtpd decides once per connection object, before the peer is known; we decide
            # per peer in connection_made (auth_needs_tls), enforced by handle_EHLO and smtp_AUTH
            auth_require_tls=False,
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
        self.auth_needs_tls = True  # until the peer is known
        self._trust: tuple[ListenerConfig, bool] | None = None

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.started:  # a new connection, not the TLS layer after STARTTLS
            self.started = True
            peer = transport.get_extra_info("peername")
            self.peer_text, self.client, loopback = describe_peer(peer)
            # cleartext AUTH, when allowed at all, only for clients on this host
            self.auth_needs_tls = self.config.auth_require_tls or not loopback
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
            transport.write(replies.timed_out(self.hostname).encode() + b"\r\n")  # type: ignore[attr-defined]
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
        transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")  # type: ignore[attr-defined]
        transport.close()

    def trusted_under(self, config: ListenerConfig) -> bool:
        """Whether the peer is one of `config.trusted_peers`: decided once per connection and
        config (a reload swaps the config whole), not parsed again for every message."""
        if self._trust is None or self._trust[0] is not config:
            assert self.session is not None
            self._trust = (config, peer_trusted(self.session.peer, config.trusted_peers))
        return self._trust[1]

    @property
    def tls_active(self) -> bool:
        return self.session is not None and self.session.ssl is not None

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        session = self.session
        assert session is not None
        # aiosmtpd's own refusal for AUTH in cleartext, after its checks for EHLO, in its order
        needs_ehlo = not session.host_name or not session.extended_smtp
        if self.auth_needs_tls and not self.tls_active and not needs_ehlo:
            await self.push(replies.AUTH_NEEDS_TLS)
            return
        await super().smtp_AUTH(arg)

    # --- replies -------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd's own replies carry no enhanced status codes; a few matter to senders
        kind = stock_reply(status)
        if kind is None:
            await super().push(status)  # type: ignore[type-var]  # AnyStr: str or bytes, each fine
            return
        await super().push(self._own_reply(kind))

    def _own_reply(self, kind: StockReply) -> str:
        if kind is StockReply.STARTTLS_FIRST:
            return replies.STARTTLS_FIRST
        if kind is StockReply.LINE_TOO_LONG:
            reply = replies.line_too_long(LINE_LENGTH_LIMIT)
        else:
            reply = replies.too_big(self.config.max_message_size)
        return self.per_recipient(reply) if kind.ends_data else reply

    def per_recipient(self, reply: str) -> str:
        """SMTP answers the end of DATA once; LMTP once per accepted recipient (RFC 2033 4.2)."""
        return reply


class LmtpConnection(LMTP, Connection):
    """LMTP: LHLO instead of EHLO, and one reply per recipient at the end of DATA."""

    def per_recipient(self, reply: str) -> str:
        assert self.envelope is not None
        return replies.per_recipient(reply, self.envelope.rcpt_tos)


def _longest_data(config: ListenerConfig) -> float:
    return config.data_timeout + config.max_message_size / config.data_min_rate


def describe_peer(peer: Any) -> tuple[str, str | None, bool]:
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
