"""What a source knows about a message besides its bytes: the contract between sources and ingest."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

UNIX_PEER = "unix"  # in [smtp] trusted_peers: clients on the listener's Unix socket


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str | None = None  # "" is the null sender (bounces); None: unknown (files, IMAP)
    rcpt_tos: tuple[str, ...] = ()
    auth_user: str | None = None  # SMTP AUTH login, when the listener authenticated the client
    peer: str | None = None
    # False: a listener client outside [smtp] trusted_peers, so its Authentication-Results are
    # a stranger's words; sources that read our own mailbox keep the default
    trusted_peer: bool = True


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # smtp | lmtp | imap | imap-sent | file | retry
    name: str = ""  # listener address, mailbox name or file path
    live: bool = True  # live sources are flood-guarded and send acknowledgements/notifications
    agent_authority: bool = False  # a polled Sent folder: its agent mail is trusted


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # created | appended | duplicate | ignored | quarantined
    ticket: int | None
    reason: str
    message: int | None = None  # stored message id
    quarantine: int | None = None  # quarantine entry id
    source: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "outcome": self.outcome,
            "ticket": self.ticket,
            "reason": self.reason,
        }


def peer_trusted(peername: object, peers: Iterable[str]) -> bool:
    """Whether a listener client is one of `peers` (IPs or CIDRs, or "unix").

    `peername` is the socket's: a (host, port, ...) tuple, else a Unix socket's ('' or a path)."""
    peers = tuple(peers)
    if not isinstance(peername, tuple) or not peername:
        return UNIX_PEER in peers
    try:
        ip = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return False
    # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    for peer in peers:
        if peer == UNIX_PEER:
            continue
        network = ipaddress.ip_network(peer, strict=False)
        if ip in network or (mapped is not None and mapped in network):
            return True
    return False
