"""Operator and rule actions on tickets (resolve, close, postpone, spam, delete, restore, purge) and
quarantine retry. Every status change goes through `lifecycle.apply` and leaves an event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge.clock import Clock, system_clock
from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.errors import IllegalTransition, NotFound, Refused
from mailbridge.lifecycle import Kind, Note
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.ingest import Ingestor
    from mailbridge.storage import Store

KINDS = {
    "resolve": Kind.RESOLVE,
    "close": Kind.CLOSE,
    "spam": Kind.SPAM,
    "delete": Kind.DELETE,
    "restore": Kind.RESTORE,
    "postpone": Kind.POSTPONE,
}


@dataclass(frozen=True, slots=True)
class Changed:
    number: int
    from_status: str
    to_status: str


class TicketActions:
    def __init__(self, store: Store, clock: Clock = system_clock) -> None:
        self.store = store
        self.clock = clock

    def act(self, number: int, action: str, actor: str, until: datetime | None = None) -> Changed:
        """Apply one action; raises NotFound or Refused (with the lifecycle's reason)."""
        now = self.clock()
        with self.store.unit() as session:
            ticket = repo.get_ticket(session, number, lock=True)
            if ticket is None:
                raise NotFound(f"no ticket #{number}")
            before = ticket.status
            try:
                transition = lifecycle.apply(
                    repo.ticket_state(ticket), lifecycle.Event(KINDS[action], actor, until), now
                )
            except IllegalTransition as exc:
                raise Refused(f"ticket #{number}: {exc}") from exc
            if transition.new_ticket:  # pragma: no cover - only customer mail opens follow-ups
                raise Refused(f"ticket #{number}: {action} is not an operator action")
            repo.save_transition(session, ticket, transition, now)
            return Changed(number, before, ticket.status)

    def purge(self, number: int, actor: str) -> int:
        """Remove a ticket for good, keeping tombstones of its Message-IDs; returns messages removed."""
        with self.store.unit() as session:
            ticket = repo.get_ticket(session, number, lock=True)
            if ticket is None:
                raise NotFound(f"no ticket #{number}")
            if ticket.status not in lifecycle.PURGEABLE:
                allowed = ", ".join(sorted(lifecycle.PURGEABLE))
                raise Refused(
                    f"ticket #{number} is {ticket.status}: only {allowed} tickets can be purged"
                )
            return repo.purge_ticket(session, number, self.clock())


def retry_quarantined(store: Store, ingestor: Ingestor, pk: int) -> Outcome:
    """Re-ingest a held message (after a fix, or to release a flood hold); the entry is released
    once the mail is on a ticket, or updated with the new reason if it fails again."""
    with store.unit() as session:
        entry = repo.get_quarantine(session, pk, with_raw=True)
        if entry is None:
            raise NotFound(f"no quarantine entry {pk}")
        if entry.state != "held":
            raise Refused(f"quarantine entry {pk} was already released")
        raw, envelope_json, source_name = entry.raw, entry.envelope, entry.source
    data = json.loads(envelope_json or "{}")
    envelope = Envelope(
        data.get("mail_from"),
        tuple(data.get("rcpt_tos") or ()),
        data.get("auth_user"),
        trusted_peer=data.get("trusted_peer", True),
    )
    outcome = ingestor.accept(raw, envelope, Source("retry", source_name, live=False))
    with store.unit() as session:
        entry = repo.get_quarantine(session, pk)
        assert entry is not None
        if outcome.quarantine and outcome.quarantine != pk:
            again = repo.get_quarantine(session, outcome.quarantine)
            if again is not None:
                entry.reason, entry.detail, entry.kind = again.reason, again.detail, again.kind
                session.delete(again)
            outcome = Outcome(
                outcome.outcome, None, outcome.reason, quarantine=pk, source=outcome.source
            )
        if outcome.outcome not in ("quarantined", "ignored"):
            entry.state, entry.released_at = "released", ingestor.clock()
    return outcome


def retry_outbox(store: Store, pk: int, actor: str, now: datetime) -> str:
    """Make an outbox row due now: a failed one is queued again with a fresh set of attempts
    (so one more 5xx does not fail it at once), a waiting one skips its back-off."""
    with store.unit() as session:
        row = repo.get_outbox(session, pk)
        if row is None:
            raise NotFound(f"no outbox entry {pk}")
        if row.state == "sent":
            raise Refused(f"outbox entry {pk} was already sent")
        before = row.state
        row.state, row.next_attempt_at = "queued", now
        if before == "failed":
            row.attempts = 0
            if row.ticket_number is not None:
                record = lifecycle.Record(
                    now, Note.DELIVERY_RETRY, actor, None, None, f"{row.kind} to {row.rcpt_tos}"
                )
                repo.add_events(session, row.ticket_number, [record], row.message_pk)
    return f"outbox {pk}: {before} -> queued, due now"
