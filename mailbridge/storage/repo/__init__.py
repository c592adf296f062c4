"""Every query mailbridge makes, in one place. Functions take the unit of work's session."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session, make_transient_to_detached, undefer

from mailbridge.storage.models import (
    Attachment,
    Base,
    Event,
    ImapFolder,
    Lease,
    Message,
    Outbox,
    Participant,
    Quarantine,
    QueueCursor,
    ThreadKey,
    Ticket,
    TicketTag,
    Tombstone,
)


def key_of(message_id: str) -> str:
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()


def _table(model: type[Base]) -> Table:
    """The Core table of a mapped class (declarative types `__table__` only as a FromClause)."""
    return cast(Table, model.__table__)


_OUTBOX = _table(Outbox)
_MESSAGES = _table(Message)
_ATTACHMENTS = _table(Attachment)


def _rowcount(result: Result[Any]) -> int:
    """Session.execute is typed as returning a Result; for DML it is a CursorResult."""
    return cast(CursorResult[Any], result).rowcount


class EventRecord(Protocol):
    """What `add_events` reads of an event (lifecycle.Record; storage does not import it)."""

    @property
    def at(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def from_status(self) -> str | None: ...
    @property
    def to_status(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...


def _insert_ignore(session: Session, model: type, rows: list[dict[str, object]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on either backend."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = _IGNORING.get((dialect, model))
    if stmt is None:
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = _IGNORING[(dialect, model)] = make(model).on_conflict_do_nothing()
    session.execute(stmt, rows)


_IGNORING: dict[tuple[str, type], Any] = {}


# --- dedup -------------------------------------------------------------------------------


def seen_dedup_key(session: Session, dedup_key: str) -> int | None:
    """The ticket number a mail with this key is on (0 when purged), or None when it is new."""
    number = session.scalar(select(Message.ticket_number).where(Message.dedup_key == dedup_key))
    if number is not None:
        return number
    if session.scalar(select(Tombstone.ticket_number).where(Tombstone.dedup_key == dedup_key)):
        return 0
    return None


def known_dedup_keys(
    session: Session, keys: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """For a batch: key -> ticket number (0 when purged), and key -> held quarantine entry."""
    if not keys:
        return {}, {}
    unique = list(set(keys))
    # one round trip for the three places a key can be: this runs once per group commit
    rows: Sequence[Any] = session.execute(  # the union's columns are untyped
        union_all(
            select(Message.dedup_key, Message.ticket_number, literal("m")).where(
                Message.dedup_key.in_(unique)
            ),
            select(Tombstone.dedup_key, literal(0), literal("t")).where(
                Tombstone.dedup_key.in_(unique)
            ),
            select(Quarantine.dedup_key, Quarantine.id, literal("q")).where(
                Quarantine.dedup_key.in_(unique), Quarantine.state == "held"
            ),
        )
    ).all()
    known: dict[str, int] = {}
    held: dict[str, int] = {}
    for key, number, where in rows:
        if where == "q":
            held[key] = number
        elif where == "m" or key not in known:
            known[key] = number
    return known, held


# --- threading ---------------------------------------------------------------------------


def tickets_for_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Message-ID -> ticket number, for those we know."""
    if not message_ids:
        return {}
    keys = {key_of(m): m for m in message_ids}
    rows = session.execute(
        select(ThreadKey.key, ThreadKey.ticket_number).where(ThreadKey.key.in_(list(keys)))
    )
    found = {keys[k]: n for k, n in rows}
    if (pending := _deferred(session)) is not None:
        for key, mid in keys.items():
            if mid not in found and key in pending.thread_keys:
                found[mid] = int(pending.thread_keys[key]["ticket_number"])
    return found


# --- deferred writes ---------------------------------------------------------------------


@dataclass
class _Deferred:
    """Rows nobody needs an id of (events, participants, Message-ID index), written once per batch
    with executemany instead of one statement per message; reads below see them meanwhile."""

    events: list[dict[str, Any]] = field(default_factory=list)
    participants: dict[tuple[int, str], dict[str, object]] = field(default_factory=dict)
    thread_keys: dict[str, dict[str, Any]] = field(default_factory=dict)


def defer_writes(session: Session) -> None:
    session.info["deferred"] = _Deferred()


def _deferred(session: Session) -> _Deferred | None:
    return session.info.get("deferred")


def flush_deferred(session: Session) -> None:
    """Write what `defer_writes` held back; the unit of work must call this before it commits."""
    pending = session.info.pop("deferred", None)
    if pending is None:
        return
    _insert_ignore(session, ThreadKey, list(pending.thread_keys.values()))
    _insert_ignore(session, Participant, list(pending.participants.values()))
    if pending.events:
        session.execute(insert(Event), pending.events)


def ticket_for_thread_index(session: Session, thread_index: str) -> int | None:
    return session.scalar(
        select(Ticket.number)
        .where(Ticket.thread_index == thread_index)
        .order_by(Ticket.number.desc())
        .limit(1)
    )


def ticket_by_token(session: Session, token: str) -> Ticket | None:
    return session.scalar(select(Ticket).where(Ticket.token == token))


def get_ticket(session: Session, number: int, lock: bool = False) -> Ticket | None:
    if lock and session.get_bind().dialect.name == "postgresql":
        return session.get(Ticket, number, with_for_update=True)
    return session.get(Ticket, number)


def is_participant(session: Session, number: int, address: str) -> bool:
    pending = _deferred(session)
    if pending is not None and (number, address.lower()) in pending.participants:
        return True
    return (
        session.scalar(
            select(Participant.id).where(
                Participant.ticket_number == number, Participant.address == address.lower()
            )
        )
        is not None
    )


def participants(session: Session, number: int) -> list[str]:
    found = list(
        session.scalars(
            select(Participant.address)
            .where(Participant.ticket_number == number)
            .order_by(Participant.id)
        )
    )
    if (pending := _deferred(session)) is not None:
        found += [a for (n, a) in pending.participants if n == number and a not in found]
    return found


def add_participants(session: Session, number: int, addresses: Iterable[tuple[str, str]]) -> None:
    rows = [{"ticket_number": number, "address": a.lower(), "role": r} for a, r in addresses if a]
    if (pending := _deferred(session)) is not None:
        for row in rows:
            pending.participants.setdefault((number, str(row["address"])), row)
        return
    _insert_ignore(session, Participant, rows)


def add_thread_keys(session: Session, number: int, message_ids: Iterable[str]) -> None:
    """Index Message-IDs for a ticket; an ID already indexed keeps its first ticket."""
    rows = [
        {"key": key_of(m), "message_id": m[:2000], "ticket_number": number}
        for m in dict.fromkeys(message_ids)
        if m
    ]
    if (pending := _deferred(session)) is not None:
        for row in rows:
            pending.thread_keys.setdefault(str(row["key"]), row)
        return
    _insert_ignore(session, ThreadKey, rows)


# --- tickets -----------------------------------------------------------------------------


def _insert_returning(session: Session, obj: Base, pk: str) -> int:
    """Core INSERT ... RETURNING for a new row: the ORM's unit of work costs several times more on
    the ingest hot path. Unset attributes fall back to the column defaults."""
    table = _table(type(obj))
    values = {
        c.key: v for c in table.columns if c.key != pk and (v := getattr(obj, c.key)) is not None
    }
    stmt = _INSERTS.get((table.name, tuple(values)))
    if stmt is None:
        stmt = _INSERTS[(table.name, tuple(values))] = insert(table).returning(table.c[pk])
    return int(session.execute(stmt, values).scalar_one())


_INSERTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def add_ticket(session: Session, ticket: Ticket) -> Ticket:
    """Insert a ticket; it comes back numbered and attached to the session, so later changes to
    it are written when the unit of work commits."""
    ticket.number = _insert_returning(session, ticket, "number")
    make_transient_to_detached(ticket)
    session.add(ticket)
    return ticket


def _count_up_to(stmt: Select[Any]) -> Select[Any]:
    """count(*) of `stmt`'s rows, reading at most `:at_most` of them: a rate limit only needs
    to know whether its limit is reached, and a busy sender's history must not cost more."""
    return select(func.count()).select_from(stmt.limit(bindparam("at_most")).subquery())


_COUNT_NEW_TICKETS_FROM = _count_up_to(
    select(Ticket.number).where(
        Ticket.customer == bindparam("customer"), Ticket.created_at >= bindparam("since")
    )
)


def count_new_tickets_from(session: Session, customer: str, since: datetime, at_most: int) -> int:
    """Tickets `customer` opened since `since`, counted up to `at_most` (the flood guard)."""
    # built once: it runs for every new ticket from a live source
    params = {"customer": customer, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_NEW_TICKETS_FROM, params) or 0


def list_tickets(
    session: Session,
    status: str | None = None,
    *,
    queue: str | None = None,
    owner: str | None = None,
    unassigned: bool = False,
    tag: str | None = None,
    priority: str | None = None,
) -> list[tuple[Ticket, int]]:
    counts = (
        select(Message.ticket_number, func.count().label("n"))
        .group_by(Message.ticket_number)
        .subquery()
    )
    stmt = (
        select(Ticket, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.ticket_number == Ticket.number)
        .order_by(Ticket.number)
    )
    if status:
        stmt = stmt.where(Ticket.status == status)
    if queue:
        stmt = stmt.where(Ticket.queue == queue)
    if owner:
        stmt = stmt.where(Ticket.owner == owner.lower())
    if unassigned:
        stmt = stmt.where(Ticket.owner.is_(None))
    if priority:
        stmt = stmt.where(Ticket.priority == priority)
    if tag:
        tagged = select(TicketTag.ticket_number).where(TicketTag.tag == tag.lower())
        stmt = stmt.where(Ticket.number.in_(tagged))
    return [(t, n) for t, n in session.execute(stmt)]


def ticket_messages(session: Session, number: int) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(Message.ticket_number == number)
            .order_by(Message.stored_at, Message.id)
        )
    )


def ticket_events(session: Session, number: int) -> list[Event]:
    return list(
        session.scalars(
            select(Event).where(Event.ticket_number == number).order_by(Event.at, Event.id)
        )
    )


def add_events(
    session: Session, number: int, records: Iterable[EventRecord], message_pk: int | None
) -> None:
    records = list(records)  # read twice: the events, then the webhooks they cause
    rows = [
        {
            "ticket_number": number,
            "at": r.at,
            "kind": str(r.kind),
            "actor": r.actor[:320],
            "from_status": r.from_status and str(r.from_status),
            "to_status": r.to_status and str(r.to_status),
            "detail": r.detail,
            "message_pk": message_pk,
        }
        for r in records
    ]
    if (pending := _deferred(session)) is not None:
        pending.events.extend(rows)
    elif rows:
        session.execute(insert(Event), rows)
    _queue_webhooks(session, number, records)


def _queue_webhooks(session: Session, number: int, records: Iterable[object]) -> None:
    """Webhook posts for the events just written, in their transaction (SPEC 9): `App` puts the
    `webhooks.Subscriptions` on every session of the store; without it nothing is queued."""
    hooks = session.info.get("webhooks")
    if not hooks:
        return
    ticket = session.get(Ticket, number)
    if ticket is None:
        return
    rows = hooks.rows(ticket, records)
    if rows:
        session.execute(insert(_OUTBOX), rows)


def install_webhooks(sessions: Any, subscriptions: object | None) -> None:
    """Make every later session of `sessions` (a sessionmaker) queue webhooks for its events."""
    sessions.configure(info={"webhooks": subscriptions})


def purge_ticket(session: Session, number: int, now: datetime) -> int:
    """Delete a ticket and everything on it, leaving tombstones; returns messages removed."""
    rows = session.execute(
        select(Message.dedup_key, Message.message_id).where(Message.ticket_number == number)
    ).all()
    _insert_ignore(
        session,
        Tombstone,
        [
            {"dedup_key": k, "message_id": m, "ticket_number": number, "purged_at": now}
            for k, m in rows
        ],
    )
    session.execute(update(Ticket).where(Ticket.follow_up_of == number).values(follow_up_of=None))
    for model in (Event, ThreadKey, Participant):
        session.execute(delete(model).where(model.ticket_number == number))
    pks = select(Message.id).where(Message.ticket_number == number)
    session.execute(delete(Attachment).where(Attachment.message_pk.in_(pks)))
    session.execute(update(Outbox).where(Outbox.message_pk.in_(pks)).values(message_pk=None))
    session.execute(update(Outbox).where(Outbox.ticket_number == number).values(ticket_number=None))
    session.execute(delete(Message).where(Message.ticket_number == number))
    session.execute(delete(Ticket).where(Ticket.number == number))
    return len(rows)


def due_postponed(session: Session, now: datetime, limit: int = 500) -> list[int]:
    return list(
        session.scalars(
            select(Ticket.number)
            .where(Ticket.status == "postponed", Ticket.postponed_until <= now)
            .order_by(Ticket.postponed_until)
            .limit(limit)
        )
    )


def idle_tickets(
    session: Session, status: str, idle_since: datetime, limit: int = 500
) -> list[int]:
    return list(
        session.scalars(
            select(Ticket.number)
            .where(Ticket.status == status, Ticket.last_activity_at <= idle_since)
            .order_by(Ticket.last_activity_at)
            .limit(limit)
        )
    )


def idle_tickets_in(
    session: Session,
    statuses: Sequence[str],
    idle_since: datetime,
    limit: int = 500,
    not_fired: tuple[str, str] | None = None,
) -> list[int]:
    """Tickets in one of `statuses`, quiet since `idle_since`; with `not_fired = (kind, actor)`,
    only those without such an event in their current quiet spell (remind/escalate fire once
    per spell, so a ticket they already served leaves the candidates)."""
    stmt = select(Ticket.number).where(
        Ticket.status.in_(list(statuses)), Ticket.last_activity_at <= idle_since
    )
    if not_fired is not None:
        kind, actor = not_fired
        fired = select(Event.id).where(
            Event.ticket_number == Ticket.number,
            Event.kind == kind,
            Event.actor == actor,
            Event.at >= Ticket.last_activity_at,
        )
        stmt = stmt.where(~fired.exists())
    return list(session.scalars(stmt.order_by(Ticket.last_activity_at).limit(limit)))


def sla_stale_tickets(session: Session, limit: int = 500) -> list[int]:
    """Tickets whose SLA due times need recomputing (created, or a status change since)."""
    return list(
        session.scalars(
            select(Ticket.number)
            .where(Ticket.sla_stale.is_(True))
            .order_by(Ticket.number)
            .limit(limit)
        )
    )


def sla_due_tickets(session: Session, now: datetime, limit: int = 500) -> list[int]:
    """Tickets with an SLA target due by `now` that is not recorded as breached yet."""
    return list(
        session.scalars(
            select(Ticket.number).where(Ticket.sla_due <= now).order_by(Ticket.sla_due).limit(limit)
        )
    )


def lock_ticket(session: Session, number: int) -> Ticket | None:
    """Claim a ticket whatever its status (SKIP LOCKED on PostgreSQL, as `lock_ticket_if`)."""
    stmt = select(Ticket).where(Ticket.number == number)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return session.scalar(stmt)


def lock_ticket_if(session: Session, number: int, status: str) -> Ticket | None:
    """Claim a ticket for a sweep: locked, and only if it still has the status the sweep expects.

    On PostgreSQL a row another node holds is skipped (SKIP LOCKED); SQLite has one writer anyway.
    """
    stmt = select(Ticket).where(Ticket.number == number, Ticket.status == status)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return session.scalar(stmt)


# --- messages ----------------------------------------------------------------------------


def add_message(session: Session, message: Message, attachments: Sequence[Attachment]) -> Message:
    """Insert a message and its attachment rows; returns it with its id (not tracked further)."""
    message.id = _insert_returning(session, message, "id")
    if attachments:
        session.execute(
            insert(_ATTACHMENTS),
            [
                {
                    "message_pk": message.id,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                }
                for a in attachments
            ],
        )
    message.attachments = list(attachments)
    _queue_message_webhooks(
        session,
        message.ticket_number,
        [{c: getattr(message, c) for c in _HOOK_COLUMNS} | {"id": message.id}],
    )
    return message


_HOOK_COLUMNS = ("message_id", "direction", "author_kind", "from_addr", "subject", "stored_at")


def _queue_message_webhooks(session: Session, number: int, messages: list[dict[str, Any]]) -> None:
    """A `message` webhook for each message just stored on ticket `number`, in its transaction
    (SPEC 9); messages write no event of their own, so `add_events` cannot do it."""
    hooks = session.info.get("webhooks")
    if not hooks or (ticket := session.get(Ticket, number)) is None:
        return
    if rows := hooks.message_rows(ticket, messages):
        session.execute(insert(Outbox.__table__), rows)  # type: ignore[arg-type]


def get_message(session: Session, pk: int, with_raw: bool = False) -> Message | None:
    opts = [undefer(Message.raw)] if with_raw else []
    return session.get(Message, pk, options=opts)


def message_ids_before(
    session: Session, number: int, before_pk: int, limit: int = 1000
) -> list[str]:
    """The ticket's Message-IDs stored before message `before_pk`, oldest first (the References
    of an outbound mail written after it was queued: what the ticket held then)."""
    return list(
        session.scalars(
            select(Message.message_id)
            .where(
                Message.ticket_number == number,
                Message.id < before_pk,
                Message.message_id.is_not(None),
            )
            .order_by(Message.id)
            .limit(limit)
        )
    )


def last_customer_message_id(session: Session, number: int) -> str | None:
    """The Message-ID of the ticket's latest customer mail that has one."""
    return session.scalar(
        select(Message.message_id)
        .where(
            Message.ticket_number == number,
            Message.author_kind == "customer",
            Message.message_id.is_not(None),
            Message.message_id != "",
        )
        .order_by(Message.stored_at.desc(), Message.id.desc())
        .limit(1)
    )


# --- quarantine --------------------------------------------------------------------------


def add_quarantine(session: Session, entry: Quarantine) -> Quarantine:
    session.add(entry)
    session.flush()
    return entry


def list_quarantine(
    session: Session, include_ignored: bool, include_released: bool
) -> list[Quarantine]:
    stmt = select(Quarantine).order_by(Quarantine.id)
    if not include_ignored:
        stmt = stmt.where(Quarantine.kind == "quarantined")
    if not include_released:
        stmt = stmt.where(Quarantine.state == "held")
    return list(session.scalars(stmt))


def get_quarantine(session: Session, pk: int, with_raw: bool = False) -> Quarantine | None:
    opts = [undefer(Quarantine.raw)] if with_raw else []
    return session.get(Quarantine, pk, options=opts)


# --- outbox ------------------------------------------------------------------------------


def add_outbox(session: Session, row: Outbox) -> Outbox:
    session.add(row)
    session.flush()
    return row


_ADD_OUTBOUND = insert(_MESSAGES).returning(
    _MESSAGES.c.id,
    sort_by_parameter_order=True,
)


def queue_outbound(
    session: Session,
    number: int,
    messages: Sequence[dict[str, Any]],
    outbox: Sequence[dict[str, Any]],
) -> list[int]:
    """Outbound mail for a ticket in three statements, whatever their number: the copies stored
    on the ticket, their Message-IDs indexed for threading, and their outbox rows (each pointing
    at its copy). Returns the copies' ids, in order."""
    if not messages:
        return []
    ids = [int(pk) for pk in session.execute(_ADD_OUTBOUND, list(messages)).scalars()]
    add_thread_keys(session, number, [m["message_id"] for m in messages])
    session.execute(
        insert(_OUTBOX),
        [row | {"message_pk": pk} for row, pk in zip(outbox, ids, strict=True)],
    )
    _queue_message_webhooks(
        session, number, [m | {"id": pk} for m, pk in zip(messages, ids, strict=True)]
    )
    return ids


def outbox_specs(session: Session, ids: Sequence[int]) -> dict[int, str]:
    """id -> spec of those rows that still wait for their bytes to be written."""
    if not ids:
        return {}
    rows = session.execute(
        select(Outbox.id, Outbox.spec).where(
            Outbox.id.in_(list(ids)), Outbox.raw.is_(None), Outbox.spec.is_not(None)
        )
    )
    return {pk: spec for pk, spec in rows if spec is not None}


@dataclass(frozen=True, slots=True)
class Written:
    """A mail the sender wrote: its bytes for outbox row `outbox_pk`, and for the ticket's copy
    (`message_pk`, None once purged) its hash, size, subject and body and attachment rows."""

    outbox_pk: int
    raw: bytes
    message_pk: int | None
    copy: dict[str, Any]  # dedup_key, content_hash, size, subject, body_text
    attachments: Sequence[Attachment]
    copy_raw: bytes | None = None  # what the ticket keeps, when not `raw` itself


_SAVE_OUTBOX_RAW = (
    update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id")).values(raw=bindparam("raw"), spec=None)
)
_SAVE_COPY = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("b_id"))
    .values(
        raw=bindparam("raw"),
        dedup_key=bindparam("dedup_key"),
        content_hash=bindparam("content_hash"),
        size=bindparam("size"),
        subject=bindparam("subject"),
        body_text=bindparam("body_text"),
    )
)


def save_written(session: Session, written: Sequence[Written]) -> None:
    """Store what the sender wrote: the bytes on each outbox row (whose spec is done with), and
    on the ticket's outbound copy with their hash, size and attachment rows."""
    if not written:
        return
    session.execute(_SAVE_OUTBOX_RAW, [{"b_id": w.outbox_pk, "raw": w.raw} for w in written])
    copies = [w for w in written if w.message_pk is not None]
    alive = set(
        session.scalars(select(Message.id).where(Message.id.in_([w.message_pk for w in copies])))
    )
    copies = [w for w in copies if w.message_pk in alive]  # not purged meanwhile
    if not copies:
        return
    session.execute(
        _SAVE_COPY,
        [
            {"b_id": w.message_pk, "raw": w.raw if w.copy_raw is None else w.copy_raw, **w.copy}
            for w in copies
        ],
    )
    files = [
        {
            "message_pk": w.message_pk,
            "filename": a.filename,
            "content_type": a.content_type,
            "size": a.size,
        }
        for w in copies
        for a in w.attachments
    ]
    if files:
        session.execute(insert(_ATTACHMENTS), files)


def raw_of_messages(session: Session, pks: Sequence[int]) -> dict[int, bytes]:
    """pk -> raw bytes of those stored messages that still exist."""
    if not pks:
        return {}
    rows = session.execute(select(Message.id, Message.raw).where(Message.id.in_(list(set(pks)))))
    return {pk: raw for pk, raw in rows}


_OUTBOX_TO = select(Outbox.id).where(
    Outbox.kind == bindparam("kind"),
    Outbox.rcpt_key == bindparam("rcpt_key"),
    Outbox.created_at >= bindparam("since"),
)
_COUNT_OUTBOX_TO = _count_up_to(_OUTBOX_TO)


def count_outbox_to(
    session: Session, kind: str, rcpt_key: str, since: datetime, at_most: int
) -> int:
    """Rows of `kind` to `rcpt_key` queued since `since`, counted up to `at_most`."""
    # built once: building the statement costs more than running it (live ingest, per ack)
    params = {"kind": kind, "rcpt_key": rcpt_key, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_OUTBOX_TO, params) or 0


_OUTBOX_KIND = select(Outbox.id).where(
    Outbox.kind == bindparam("kind"), Outbox.created_at >= bindparam("since")
)
_COUNT_OUTBOX_KIND = _count_up_to(_OUTBOX_KIND)


def count_outbox_kind(
    session: Session, kind: str, since: datetime, at_most: int, domain: str | None = None
) -> int:
    """Rows of `kind` queued since `since`, all of them or those whose first recipient is at
    `domain` (acknowledgement limits), counted up to `at_most`."""
    params: dict[str, Any] = {"kind": kind, "since": since, "at_most": at_most}
    if domain is None:
        return session.scalar(_COUNT_OUTBOX_KIND, params) or 0
    pattern = "%@" + domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = _count_up_to(_OUTBOX_KIND.where(Outbox.rcpt_key.like(pattern, escape="\\")))
    return session.scalar(stmt, params) or 0


def claim_outbox(
    session: Session, now: datetime, lease: timedelta, limit: int = 20, kind: str | None = None
) -> list[Outbox]:
    """Due rows (of `kind` only, if given), claimed by pushing their next attempt past the lease
    (SKIP LOCKED on PostgreSQL)."""
    stmt = (
        select(Outbox)
        .options(undefer(Outbox.raw))
        .where(Outbox.state == "queued", Outbox.next_attempt_at <= now)
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
    )
    if kind is not None:
        stmt = stmt.where(Outbox.kind == kind)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = list(session.scalars(stmt))
    for row in rows:
        row.next_attempt_at = now + lease
    return rows


def renew_outbox(
    session: Session, ids: Sequence[int], stamp: datetime, until: datetime
) -> set[int]:
    """Extend a claim: rows of `ids` still queued under our `stamp` now wait until `until`.
    Returns the ids still ours (a row another sender took after our lease ran out is not)."""
    if not ids:
        return set()
    kept = session.scalars(
        update(Outbox)
        .where(Outbox.id.in_(list(ids)), Outbox.state == "queued", Outbox.next_attempt_at == stamp)
        .values(next_attempt_at=until)
        .returning(Outbox.id)
        .execution_options(synchronize_session=False)
    )
    return set(kept)


def get_outbox(session: Session, pk: int) -> Outbox | None:
    return session.get(Outbox, pk)


def outbox_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all())


def list_outbox(session: Session, state: str | None = None) -> list[Outbox]:
    stmt = select(Outbox).order_by(Outbox.id)
    if state:
        stmt = stmt.where(Outbox.state == state)
    return list(session.scalars(stmt))


# --- IMAP checkpoints and leases ---------------------------------------------------------


def imap_checkpoint(session: Session, account: str, folder: str) -> ImapFolder | None:
    return session.get(ImapFolder, (account, folder))


def save_imap_checkpoint(
    session: Session, account: str, folder: str, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    row = session.get(ImapFolder, (account, folder))
    if row is None:
        session.add(
            ImapFolder(
                account=account,
                folder=folder,
                uidvalidity=uidvalidity,
                last_uid=last_uid,
                last_success_at=now,
            )
        )
    else:
        if row.uidvalidity == uidvalidity:
            last_uid = max(last_uid, row.last_uid)  # never move backwards
        row.uidvalidity, row.last_uid, row.last_success_at = uidvalidity, last_uid, now


def acquire_lease(
    session: Session,
    name: str,
    owner: str,
    now: datetime,
    ttl: timedelta,
    incarnation: str = "",
    reclaim: Callable[[str | None], bool] | None = None,
) -> bool:
    """Take or renew a lease; True when `owner` (in this `incarnation`) holds it until now + ttl.

    A lease held by another owner, or by another incarnation of this owner, is taken only once it
    has expired, or (same owner only) when `reclaim(its incarnation)` says that process is gone.
    """
    values = {"owner": owner, "incarnation": incarnation, "expires_at": now + ttl}
    _insert_ignore(session, Lease, [{"name": name, **values, "heartbeat_at": now}])
    mine = (Lease.owner == owner) & (Lease.incarnation == incarnation)
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(mine, Lease.expires_at < now))
        .values(**values, heartbeat_at=now)
    )
    if _rowcount(result) or reclaim is None:
        return bool(_rowcount(result))
    row = session.get(Lease, name)
    if row is None or row.owner != owner or not reclaim(row.incarnation):
        return False
    # compare-and-set: of two restarted processes racing for it, only one wins
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner, Lease.incarnation == row.incarnation)
        .values(**values, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(_rowcount(result))


def release_lease(session: Session, name: str, owner: str, incarnation: str = "") -> None:
    session.execute(
        delete(Lease).where(
            Lease.name == name, Lease.owner == owner, Lease.incarnation == incarnation
        )
    )


def lease_owner(session: Session, name: str) -> tuple[str, datetime] | None:
    row = session.get(Lease, name)
    return (row.owner, row.expires_at) if row else None


def lease_holder(session: Session, name: str) -> tuple[str, str | None, datetime] | None:
    """(owner, incarnation, expires_at) of a lease, or None when nobody holds it."""
    row = session.get(Lease, name)
    return (row.owner, row.incarnation, row.expires_at) if row else None


# --- report ------------------------------------------------------------------------------


def status_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Ticket.status, func.count()).group_by(Ticket.status)).all())


def all_events(session: Session) -> list[Event]:
    return list(session.scalars(select(Event).order_by(Event.ticket_number, Event.at, Event.id)))


def all_tickets(session: Session) -> list[Ticket]:
    return list(session.scalars(select(Ticket).order_by(Ticket.number)))


# --- queues, owners, tags (SPEC 7) --------------------------------------------------------

_OPEN = ("new", "open", "answered", "postponed")


def take_turn(session: Session, queue: str) -> int:
    """Advance a queue's round-robin cursor and return the turn it was at (0 first).

    The UPDATE holds the row's lock until the creating transaction ends, so nodes creating
    tickets in one queue at once take turns one after another, and a rollback gives the turn back."""
    # Core on the session's connection: the ORM's statement handling costs more than the UPDATE
    connection = session.connection()
    position = connection.execute(_TAKE_TURN, {"q": queue}).scalar()
    if position is None:  # the queue's first ticket: make its row, then take the turn
        _insert_ignore(session, QueueCursor, [{"queue": queue, "position": 0}])
        position = connection.execute(_TAKE_TURN, {"q": queue}).scalar_one()
    return int(position) - 1


# built once, on the Core table: it runs for every new ticket of a round-robin queue
_CURSORS = _table(QueueCursor)
_TAKE_TURN = (
    update(_CURSORS)
    .where(_CURSORS.c.queue == bindparam("q"))
    .values(position=_CURSORS.c.position + 1)
    .returning(_CURSORS.c.position)
)


def open_counts(session: Session, members: Sequence[str]) -> dict[str, int]:
    """Tickets each member owns in new/open/answered/postponed, over all queues (their workload)."""
    stmt = (
        select(Ticket.owner, func.count())
        .where(Ticket.owner.in_(list(members)), Ticket.status.in_(_OPEN))
        .group_by(Ticket.owner)
    )
    return {str(owner): int(n) for owner, n in session.execute(stmt)}


def last_owner(session: Session, customer: str, queue: str, since: datetime) -> str | None:
    """The owner of this customer's most recent owned ticket in the queue created since `since`."""
    return session.scalar(
        select(Ticket.owner)
        .where(
            Ticket.customer == customer,
            Ticket.queue == queue,
            Ticket.created_at >= since,
            Ticket.owner.is_not(None),
        )
        .order_by(Ticket.created_at.desc(), Ticket.number.desc())
        .limit(1)
    )


def add_tags(session: Session, number: int, tags: Iterable[str]) -> None:
    rows = [{"ticket_number": number, "tag": t} for t in tags]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = _ADD_TAGS.get(dialect)
    if stmt is None:
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = _ADD_TAGS[dialect] = make(_table(TicketTag)).on_conflict_do_nothing()
    session.connection().execute(stmt, rows)


_ADD_TAGS: dict[str, Any] = {}


def remove_tags(session: Session, number: int, tags: Iterable[str]) -> None:
    session.execute(
        delete(TicketTag).where(TicketTag.ticket_number == number, TicketTag.tag.in_(list(tags)))
    )


def tags_of(session: Session, numbers: Sequence[int]) -> dict[int, list[str]]:
    """Each ticket's tags, sorted; tickets without tags are absent."""
    found: dict[int, list[str]] = {}
    for start in range(0, len(numbers), 500):
        chunk = list(numbers[start : start + 500])
        rows = session.execute(
            select(TicketTag.ticket_number, TicketTag.tag)
            .where(TicketTag.ticket_number.in_(chunk))
            .order_by(TicketTag.ticket_number, TicketTag.tag)
        )
        for n, tag in rows:
            found.setdefault(int(n), []).append(str(tag))
    return found


def all_tags(session: Session) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for n, tag in session.execute(
        select(TicketTag.ticket_number, TicketTag.tag).order_by(TicketTag.tag)
    ):
        found.setdefault(int(n), []).append(str(tag))
    return found


def queue_summary(session: Session) -> list[tuple[str, str, bool, int, datetime | None]]:
    """(queue, status, unowned, count, oldest last activity) groups, for `mailbridge queues`."""
    stmt = select(
        Ticket.queue,
        Ticket.status,
        Ticket.owner.is_(None),
        func.count(),
        func.min(Ticket.last_activity_at),
    ).group_by(Ticket.queue, Ticket.status, Ticket.owner.is_(None))
    return [
        (str(q), str(s), bool(u), int(n), oldest) for q, s, u, n, oldest in session.execute(stmt)
    ]


def unassigned_counts(session: Session) -> dict[str, int]:
    stmt = (
        select(Ticket.queue, func.count())
        .where(Ticket.owner.is_(None), Ticket.status.in_(_OPEN))
        .group_by(Ticket.queue)
    )
    return {str(q): int(n) for q, n in session.execute(stmt)}
