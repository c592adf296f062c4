"""Group commit and its failure ladder, for every source: a batch of mail in one transaction; if
anything in it fails, the batch again with a savepoint per message, so the failing one is parked
in quarantine and the rest commit. (The last rung, each message in a transaction of its own when
the batch cannot commit at all, is `Ingestor.accept_many`'s.)

Parking keeps the raw bytes with the reason, so failed mail is never lost.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge.envelope import Outcome
from mailbridge.errors import DuplicateKey
from mailbridge.ingest.mail import Prepared, sender
from mailbridge.storage import repo
from mailbridge.storage.models import Quarantine

if TYPE_CHECKING:
    from mailbridge.clock import Clock
    from mailbridge.storage import Batch, Session, Store

log = logging.getLogger("mailbridge.ingest")


@dataclass(slots=True)
class Seen:
    """Dedup keys already stored (key -> ticket, 0 when purged) or held in quarantine, for one batch:
    fetched in one query per batch, then kept current as the batch goes."""

    known: dict[str, int]
    held: dict[str, int]

    @classmethod
    def of(cls, session: Session, prepared: list[Prepared]) -> Seen:
        """What the batch's mail has been, and (read ahead for all of it) the tickets its
        In-Reply-To and References lead to: a few statements per batch, not per mail."""
        repo.prefetch_threads(
            session,
            (
                mid
                for p in prepared
                if p.parsed is not None
                for mid in (*p.parsed.in_reply_to, *p.parsed.references)
            ),
        )
        return cls(*repo.known_dedup_keys(session, [p.dedup_key for p in prepared]))

    def note(self, key: str, outcome: Outcome) -> None:
        if outcome.outcome in ("created", "appended") and outcome.ticket:
            self.known[key] = outcome.ticket
        elif outcome.quarantine and outcome.outcome != "duplicate":
            self.held[key] = outcome.quarantine


# decides one message and writes what it decided, in the caller's transaction
Decide = Callable[["Session", Prepared, Seen], Outcome]


def commit(store: Store, prepared: list[Prepared], decide: Decide, clock: Clock) -> list[Outcome]:
    """The batch in one transaction; on any failure, again with a savepoint per message.

    Raises StorageUnavailable when even that cannot commit."""
    try:
        return _all(store, prepared, decide)
    except Exception:
        # something failed: redo the batch one message at a time
        return _each(store, prepared, decide, clock)


def trial(store: Store, p: Prepared, decide: Decide, clock: Clock) -> Outcome:
    """Decide one message as `commit` would, in a transaction that is rolled back."""
    with store.trial() as batch:
        return _one(batch, p, Seen.of(batch.session, [p]), decide, clock)


def _all(store: Store, prepared: list[Prepared], decide: Decide) -> list[Outcome]:
    """The fast path: the whole batch in one transaction, without savepoints."""
    with store.batch() as batch:
        seen = Seen.of(batch.session, prepared)
        outcomes = []
        for p in prepared:
            outcome = decide(batch.session, p, seen)
            seen.note(p.dedup_key, outcome)
            outcomes.append(replace(outcome, source=p.source.name or p.source.kind))
        return outcomes


def _each(store: Store, prepared: list[Prepared], decide: Decide, clock: Clock) -> list[Outcome]:
    """Each message in a savepoint of its own: a failing one is quarantined, the rest commit."""
    with store.batch() as batch:
        seen = Seen.of(batch.session, prepared)
        return [_one(batch, p, seen, decide, clock) for p in prepared]


def _one(batch: Batch, p: Prepared, seen: Seen, decide: Decide, clock: Clock) -> Outcome:
    """One message in a savepoint of the batch; if it fails, it is quarantined instead."""
    session = batch.session
    try:
        with batch.savepoint():
            outcome = decide(session, p, seen)
    except DuplicateKey:
        # another node (or an earlier message of this batch) stored the same mail first
        number = repo.seen_dedup_key(session, p.dedup_key)
        if number is None:
            outcome = park(session, p, "storage conflict", traceback.format_exc(), clock())
        else:
            outcome = Outcome("duplicate", number or None, "duplicate: stored concurrently")
    except Exception as exc:
        log.exception("ingest failed; quarantining the message")
        reason = f"error: {exc.__class__.__name__}: {exc}"[:500]
        outcome = park(session, p, reason, traceback.format_exc(), clock())
    return replace(outcome, source=p.source.name or p.source.kind)


def park(
    session: Session,
    p: Prepared,
    reason: str,
    detail: str,
    at: datetime,
    kind: str = "quarantined",
) -> Outcome:
    """Hold the raw mail in quarantine with the reason (`ignored`: held, but nothing went wrong)."""
    msg = p.parsed
    entry = repo.add_quarantine(
        session,
        Quarantine(
            kind=kind,
            state="held",
            reason=reason[:1000],
            detail=detail,
            source=f"{p.source.kind}:{p.source.name}"[:200],
            envelope=json.dumps(
                {
                    "mail_from": p.envelope.mail_from,
                    "rcpt_tos": list(p.envelope.rcpt_tos),
                    "auth_user": p.envelope.auth_user,
                    "trusted_peer": p.envelope.trusted_peer,
                }
            ),
            sender=sender(p)[:320],
            message_id=msg.message_id if msg else None,
            dedup_key=p.dedup_key,
            created_at=at,
            size=len(p.raw),
            raw=p.raw,
        ),
    )
    outcome = "ignored" if kind == "ignored" else "quarantined"
    return Outcome(outcome, None, reason, quarantine=entry.id)
