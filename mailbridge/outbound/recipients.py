"""Whom a mail about a ticket reaches: its customer and participants, or its owner or queue.

Never ourselves, never an agent by way of a customer's thread (agents get notifications
instead), and never more than the configured limits allow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.headerregistry import Address
from typing import TYPE_CHECKING

from mailbridge import rules as classify
from mailbridge.mailtext import header_safe, mailbox
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.outbound.config import OutboundConfig
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

# an internationalised address (RFC 6531): any non-ASCII, none of the characters that need
# quoting or could end the address
_UTF8_ATOM = re.compile(r"[^\x00-\x20\x7f\x85\u2028\u2029\"(),:;<>@\[\\\]]+")

Unreachable = list[tuple[str, str]]  # (address, why)


def customer_recipients(
    session: Session, config: OutboundConfig, ticket: Ticket
) -> tuple[list[Address], list[Address]]:
    """The customer (To) and the other participants (Cc): the only addresses a relay reaches,
    at most `max_participants` and `max_recipients` of them (tickets from before the limit
    may hold more)."""
    to: list[Address] = []
    cc: list[Address] = []
    for address, name, is_customer in _participants(session, config, ticket):
        box = mailbox(name, address)
        if box is not None:
            (to if is_customer else cc).append(box)
    return _bounded(config, to, cc)


def relay_recipients(
    session: Session, config: OutboundConfig, ticket: Ticket
) -> tuple[list[Address], list[Address], Unreachable]:
    """Like `customer_recipients`, also with addresses only SMTPUTF8 can carry (the sender fails them
    with a notice when the smarthost does not offer it); the addresses that cannot be written
    at all come third, with the reason."""
    to: list[Address] = []
    cc: list[Address] = []
    unreachable: Unreachable = []
    for address, name, is_customer in _participants(session, config, ticket):
        box = mailbox(name, address) or utf8_mailbox(name, address)
        if box is None:
            unreachable.append((address, "the address cannot be written safely in a header"))
        else:
            (to if is_customer else cc).append(box)
    return *_bounded(config, to, cc), unreachable


def agent_recipients(config: OutboundConfig, ticket: Ticket) -> list[Address]:
    """The ticket's owner when it has one, else its queue's notify list (SPEC 7)."""
    addresses = [ticket.owner] if ticket.owner else config.notify_of(ticket.queue)
    boxes = [a for a in (mailbox("", n) for n in addresses) if a]
    return boxes[: config.max_recipients]


def utf8_mailbox(name: str, address: str) -> Address | None:
    """An address with non-ASCII characters that SMTPUTF8 can carry as it is, else None."""
    local, at, domain = address.rpartition("@")
    if address.isascii() or not at or not local or not domain:
        return None
    if not all(_UTF8_ATOM.fullmatch(p) for p in (*local.split("."), *domain.split("."))):
        return None
    try:
        return Address(display_name=header_safe(name, 200), username=local, domain=domain)
    except Exception:  # the email package raises several kinds for malformed addresses
        return None


def _participants(
    session: Session, config: OutboundConfig, ticket: Ticket
) -> Iterator[tuple[str, str, bool]]:
    """(address, display name, is the customer) of the participants our mail may reach."""
    for address in repo.participants(session, ticket.number):
        if config.tokens.is_ours(address) or classify.is_agent_address(address, config.agents):
            continue  # never mail ourselves, and agents get notifications instead
        is_customer = address == ticket.customer
        yield address, ticket.customer_name if is_customer else "", is_customer


def _bounded(
    config: OutboundConfig, to: list[Address], cc: list[Address]
) -> tuple[list[Address], list[Address]]:
    limit = min(config.max_participants, config.max_recipients)
    return to[:limit], cc[: max(0, limit - len(to[:limit]))]
