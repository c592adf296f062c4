"""The unit of work and the batch: storage's session, and where a transaction's rows wait.

A unit of work is one transaction (`Store.unit()`). A batch (`Store.batch()`) is one transaction
for many mails, the group commit every source uses. The rows ingest writes -- tickets, messages,
attachments, tags, events, participants, the Message-ID index and outbox rows -- go through
`session.rows`: a unit writes them at once; a batch holds them back and writes each table with
one executemany before it commits or one of its savepoints ends, so a batch of 200 new tickets
costs a handful of statements, not several per mail. Tickets and messages get their keys when
they are added (`dialect.IdSource`), so everything that refers to them can be held too.

The reads of those rows that ingest makes are methods of the same object, or ask it for what it
holds (`held_tickets`, `held_messages`), so a read inside a batch sees the rows it holds: there
is no mode to remember. `Batch` is in `storage/batch.py`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import groupby
from typing import Any, Protocol

from sqlalchemy import Engine, Table, bindparam, insert, orm, select
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from mailbridge.storage import dialect
from mailbridge.storage.models import (
    Attachment,
    Event,
    Message,
    Outbox,
    OutboxCount,
    Participant,
    ThreadKey,
    Ticket,
    TicketTag,
    table_of,
)

_TICKETS = table_of(Ticket)
_MESSAGES = table_of(Message)
_ATTACHMENTS = table_of(Attachment)
_TAGS = table_of(TicketTag)
_PARTICIPANTS = table_of(Participant)
_THREAD_KEYS = table_of(ThreadKey)
_OUTBOX = table_of(Outbox)
_COUNTS = table_of(OutboxCount)
_INSERT_EVENTS = insert(table_of(Event))
_INSERT_TICKET = insert(_TICKETS).returning(_TICKETS.c.number)
_INSERT_MESSAGES = insert(_MESSAGES).returning(_MESSAGES.c.id, sort_by_parameter_order=True)
_THREAD_TICKETS = select(ThreadKey.key, ThreadKey.ticket_number).where(
    ThreadKey.key.in_(bindparam("keys", expanding=True))
)


def _defaults(table: Table) -> dict[str, Any]:
    """Each column's scalar default (None where it has none): what an INSERT that leaves the
    column out would store, given explicitly so every row of an executemany has every key."""
    return {
        c.key: c.default.arg if isinstance(c.default, ScalarElementColumnDefault) else None
        for c in table.columns
    }


_TICKET_DEFAULTS = _defaults(_TICKETS)
MESSAGE_DEFAULTS = _defaults(_MESSAGES)


def _row(obj: Ticket | Message, defaults: dict[str, Any]) -> dict[str, Any]:
    row = dict(defaults)
    for key in row:
        value = getattr(obj, key)
        if value is not None:
            row[key] = value
    return row


def ticket_row(ticket: Ticket) -> dict[str, Any]:
    """The ticket's column values as they stand, defaults where unset."""
    return _row(ticket, _TICKET_DEFAULTS)


def message_row(message: Message) -> dict[str, Any]:
    return _row(message, MESSAGE_DEFAULTS)


def attach(session: Session, ticket: Ticket, row: dict[str, Any]) -> None:
    """Make a written ticket a persistent object of the session, every column loaded (a column
    left unloaded would cost a SELECT when first read), so later changes become an UPDATE."""
    loaded = ticket.__dict__  # where the ORM keeps the values set: only the rest is set here
    for key, value in row.items():
        if key not in loaded:
            setattr(ticket, key, value)
    make_transient_to_detached(ticket)
    session.add(ticket)


def insert_runs(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """One executemany per run of rows with the same columns, in order (an executemany needs
    every row to name the same columns; outbox rows of mail and of webhooks differ)."""
    connection = session.connection()

    def columns(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(row)

    for _, run in groupby(rows, key=columns):
        connection.execute(insert(table), list(run))


class WebhookRows(Protocol):
    """What queues webhook posts for the events and messages a transaction writes
    (`outbound.webhooks.Subscriptions`; storage does not import it)."""

    def rows(self, ticket: Ticket, records: Iterable[Any]) -> list[dict[str, Any]]: ...

    def message_rows(
        self, ticket: Ticket, messages: Iterable[dict[str, Any]]
    ) -> list[dict[str, Any]]: ...


class Session(orm.Session):
    """The session of one unit of work or batch: where its rows go (`rows`), and the webhook
    subscriptions whose posts its events queue (`webhooks`, given to the store's sessionmaker)."""

    def __init__(
        self,
        bind: Engine | None = None,
        *,
        webhooks: WebhookRows | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(bind, **kwargs)
        self.webhooks = webhooks
        self.rows: Rows = Rows(self)


class Rows:
    """The rows a unit of work writes, written at once, and the reads that a transaction makes
    about its own tickets. They run as Core on the session's connection: ingest makes several
    per mail, and the ORM's handling of a statement costs more than these small statements do."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- writes ----------------------------------------------------------------------------

    def add_ticket(self, ticket: Ticket) -> Ticket:
        """Insert a ticket; it comes back numbered and attached to the session, so later changes
        to it are written when the unit of work commits."""
        row = ticket_row(ticket)
        del row["number"]
        ticket.number = int(self.session.connection().execute(_INSERT_TICKET, row).scalar_one())
        attach(self.session, ticket, row | {"number": ticket.number})
        return ticket

    def add_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert message rows; returns their ids, in order."""
        if not rows:
            return []
        result = self.session.connection().execute(_INSERT_MESSAGES, rows)
        return [int(pk) for pk in result.scalars()]

    def add_attachments(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(insert(_ATTACHMENTS), rows)

    def add_tags(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (ticket_number, tag); a tag the ticket has is kept."""
        dialect.insert_ignore(self.session, _TAGS, rows)

    def add_outbox(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            insert_runs(self.session, _OUTBOX, rows)

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(_INSERT_EVENTS, rows)

    def add_counts(self, rows: list[dict[str, Any]]) -> None:
        """Counter rows (kind, key, hour, shard, n): `n` is added to what the row holds."""
        if rows:
            stmt = dialect.insert_adding(dialect.name(self.session), _COUNTS, "n")
            self.session.connection().execute(stmt, rows)

    def add_participants(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (ticket_number, address, role); an address already on the ticket is kept."""
        dialect.insert_ignore(self.session, _PARTICIPANTS, rows)

    def add_thread_keys(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (key, message_id, ticket_number); a key already indexed keeps its ticket."""
        dialect.insert_ignore(self.session, _THREAD_KEYS, rows)

    def flush(self) -> None:
        """Write what is held (a unit holds nothing): before a statement that must see it."""

    # --- reads -----------------------------------------------------------------------------

    def held_counts(self, kind: str, keys: Collection[str], hour: int) -> dict[str, int]:
        """What counter rows of `kind` for `keys`, from `hour` on, are still to be added."""
        return {}

    def held_tickets(self) -> Collection[Ticket]:
        """Tickets added but not written yet (a batch's), newest last."""
        return ()

    @property
    def memo(self) -> dict[Any, Any]:
        """Where a read may keep what it read of the written rows until the next write: a
        unit writes at once, so it keeps nothing (a new dict each time)."""
        return {}

    def held_messages(self) -> Collection[dict[str, Any]]:
        """Message rows added but not written yet, newest last."""
        return ()

    def ticket(self, number: int, lock: bool = False) -> Ticket | None:
        if lock and dialect.locks_rows(self.session):
            return self.session.get(Ticket, number, with_for_update=True)
        return self.session.get(Ticket, number)

    def prefetch(self, keys: Collection[str]) -> None:
        """Read ahead where these index keys lead (a batch does; a unit reads as it goes)."""

    def thread_tickets(self, keys: Collection[str]) -> dict[str, int]:
        """Index key -> ticket number, for the keys indexed."""
        if not keys:
            return {}
        result = self.session.connection().execute(_THREAD_TICKETS, {"keys": list(keys)})
        return {k: n for k, n in result}

    def participants(self, number: int) -> list[str]:
        """The ticket's addresses, in the order they joined."""
        stmt = (
            select(Participant.address)
            .where(Participant.ticket_number == number)
            .order_by(Participant.id)
        )
        return list(self.session.connection().execute(stmt).scalars())

    def is_participant(self, number: int, address: str) -> bool:
        stmt = select(Participant.id).where(
            Participant.ticket_number == number, Participant.address == address
        )
        return self.session.connection().execute(stmt).first() is not None

    def events(self, number: int) -> list[Event]:
        """The ticket's events, oldest first."""
        stmt = select(Event).where(Event.ticket_number == number).order_by(Event.at, Event.id)
        return list(self.session.scalars(stmt))
