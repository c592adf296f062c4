"""Builds outgoing mail (acknowledgements, notifications, relayed replies, notices) and queues it.

Interface used by ingest and the ticket actions; every method runs inside the caller's unit of
work, so the outbox row commits with the change that caused it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailbridge.classify import Verdict
    from mailbridge.parse import ParsedMessage
    from mailbridge.storage.models import Message, Ticket


class Outbound:
    def __init__(self, settings: Any, clock: Any = None) -> None:
        self.settings = settings
        self.clock = clock

    def new_ticket(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        verdict: Verdict,
        now: datetime,
    ) -> None:
        """Acknowledge to the customer (when allowed) and notify agents."""

    def customer_reply(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage | None,
        now: datetime,
    ) -> None:
        """Notify agents of a customer's reply."""

    def relay(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        parsed: ParsedMessage,
        text: str,
        agent: str,
        now: datetime,
    ) -> None:
        """Relay an agent's reply to the ticket's customer and participants."""

    def refused(
        self,
        session: Session,
        ticket: Ticket,
        agent: str,
        reasons: list[str],
        parsed: ParsedMessage,
        now: datetime,
    ) -> None:
        """Tell an agent that a command was refused, and why."""

    def strip_footer(self, text: str) -> str:
        return text
