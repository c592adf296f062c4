"""Threading (SPEC 2): which ticket a mail belongs to, from its thread keys, over a lookup.

The keys are tried in SPEC order, first match wins: In-Reply-To, References (newest first),
Thread-Index, a token in a recipient address, then the subject tag, which only counts when the
sender is already on the ticket (or an agent): anyone can type a tag into a subject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.correlate import Tagger, ThreadKeys
    from mailbridge.parse import ParsedMessage
    from mailbridge.rules import Verdict
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket


@dataclass(slots=True)
class Decision:
    """What threading found: the ticket, and the rule that found it."""

    ticket: Ticket | None
    rule: str


class Lookup(Protocol):
    """What threading asks of the stored tickets."""

    def tickets_for_message_ids(self, message_ids: Sequence[str]) -> Mapping[str, int]: ...

    def ticket_for_thread_index(self, thread_index: str) -> int | None: ...

    def ticket_by_token(self, token: str) -> Ticket | None: ...

    def ticket(self, number: int, lock: bool = False) -> Ticket | None: ...

    def is_participant(self, number: int, address: str) -> bool: ...


class Stored:
    """The lookup over the unit of work's session (and the rows its batch holds back)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def tickets_for_message_ids(self, message_ids: Sequence[str]) -> Mapping[str, int]:
        return repo.tickets_for_message_ids(self.session, message_ids)

    def ticket_for_thread_index(self, thread_index: str) -> int | None:
        return repo.ticket_for_thread_index(self.session, thread_index)

    def ticket_by_token(self, token: str) -> Ticket | None:
        return repo.ticket_by_token(self.session, token)

    def ticket(self, number: int, lock: bool = False) -> Ticket | None:
        return repo.get_ticket(self.session, number, lock=lock)

    def is_participant(self, number: int, address: str) -> bool:
        return repo.is_participant(self.session, number, address)


def match(
    lookup: Lookup, keys: ThreadKeys, msg: ParsedMessage, verdict: Verdict, tagger: Tagger
) -> Decision:
    """The ticket the keys lead to, locked for the change to come; or None and why not."""

    def found(number: int, rule: str) -> Decision:
        return Decision(lookup.ticket(number, lock=True), rule)

    if keys.message_ids:
        known = lookup.tickets_for_message_ids(keys.message_ids)
        for mid in keys.message_ids:
            if mid in known:
                header = "in-reply-to" if mid in msg.in_reply_to else "references"
                return found(known[mid], f"{header} <{mid}>")
    if keys.thread_index:
        number = lookup.ticket_for_thread_index(keys.thread_index)
        if number:
            return found(number, f"thread-index {keys.thread_index[:12]}…")
    for token in keys.tokens:
        ticket = lookup.ticket_by_token(token)
        if ticket:
            return found(ticket.number, f"token in recipient address (ticket #{ticket.number})")
    if keys.tag_number is not None:
        ticket = lookup.ticket(keys.tag_number)
        sender = msg.from_.addr.lower() if msg.from_ else ""
        if ticket is not None:
            tag = tagger.format(keys.tag_number)
            if sender and sender == ticket.customer:
                return found(ticket.number, f"subject-tag {tag}, sender is the customer")
            if sender and lookup.is_participant(ticket.number, sender):
                return found(ticket.number, f"subject-tag {tag}, sender is a participant")
            if verdict.agent:
                return found(ticket.number, f"subject-tag {tag}, sender is an agent")
            return Decision(
                None,
                f"subject-tag {tag} ignored: {sender or 'sender'} is not on ticket #{ticket.number}",
            )
    return Decision(None, "no thread match")
