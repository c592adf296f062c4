"""The batch: many mails in one transaction (`Store.batch()`), the group commit every source
uses. It holds the rows its mail adds, with their keys taken up front, and writes each table with
one executemany when it flushes; its reads see what it holds (see `storage/uow.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert, orm, select
from sqlalchemy.exc import IntegrityError

from mailbridge.errors import DuplicateKey
from mailbridge.storage import dialect
from mailbridge.storage.models import Event, Message, Ticket, table_of
from mailbridge.storage.uow import (
    MESSAGE_DEFAULTS,
    Rows,
    Session,
    attach,
    insert_runs,
    ticket_row,
)

_TICKETS = table_of(Ticket)
_MESSAGES = table_of(Message)


class Batch(Rows):
    """Many mails in one transaction. Its rows wait here and are written once per table
    (`flush`), instead of one statement per mail; the reads see them meanwhile.

    `savepoint()` runs one mail so that its failure undoes only its own rows, held ones included.
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.ids = dialect.IdSource(session)
        # what `prefetch` read: index keys asked (found or not), where the found ones lead, and
        # the tickets it loaded (and on PostgreSQL locked) for the batch
        self._asked: set[str] = set()
        self._indexed: dict[str, int] = {}
        # held here too: the session's identity map keeps objects only while someone does
        self._loaded: dict[int, Ticket] = {}
        # tickets written since the current savepoint began: its rollback must take them back
        self._written: list[Ticket] = []
        self._drop()

    @property
    def memo(self) -> dict[Any, Any]:
        # what was read of the written rows holds until the batch writes: a flush clears it
        return self._memo

    def _drop(self) -> None:
        self._memo: dict[Any, Any] = {}
        self._tickets: dict[int, Ticket] = {}
        self._messages: list[dict[str, Any]] = []
        self._attachments: list[dict[str, Any]] = []
        self._tags: dict[tuple[int, str], dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._participants: dict[tuple[int, str], dict[str, Any]] = {}
        self._thread_keys: dict[str, dict[str, Any]] = {}
        self._outbox: list[dict[str, Any]] = []
        self._counts: dict[tuple[str, str, int, int], int] = {}

    # --- writes, held ----------------------------------------------------------------------

    def add_ticket(self, ticket: Ticket) -> Ticket:
        ticket.number = self.ids.take(_TICKETS, "number")
        self._tickets[ticket.number] = ticket
        return ticket

    def add_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        # message ids are seen by nobody but `message raw`: a block of them per round trip
        ids = [self.ids.take(_MESSAGES, "id", block=32) for _ in rows]
        self._messages += [
            MESSAGE_DEFAULTS | row | {"id": pk} for row, pk in zip(rows, ids, strict=True)
        ]
        return ids

    def add_attachments(self, rows: list[dict[str, Any]]) -> None:
        self._attachments += rows

    def add_tags(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._tags.setdefault((row["ticket_number"], row["tag"]), row)

    def add_outbox(self, rows: list[dict[str, Any]]) -> None:
        self._outbox += rows

    def add_counts(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            key = (row["kind"], row["key"], row["hour"], row["shard"])
            self._counts[key] = self._counts.get(key, 0) + row["n"]

    def held_counts(self, kind: str, keys: Collection[str], hour: int) -> dict[str, int]:
        found: dict[str, int] = {}
        for (k, key, h, _), n in self._counts.items():
            if k == kind and key in keys and h >= hour:
                found[key] = found.get(key, 0) + n
        return found

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        self._events += rows

    def add_participants(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._participants.setdefault((row["ticket_number"], row["address"]), row)

    def add_thread_keys(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._thread_keys.setdefault(row["key"], row)

    def flush(self) -> None:
        """Write the rows held so far, the referenced tables first; the batch does it before it
        commits, and before and after each savepoint."""
        tickets, messages, attachments = self._tickets, self._messages, self._attachments
        tags, thread_keys = list(self._tags.values()), list(self._thread_keys.values())
        participants, events, outbox = list(self._participants.values()), self._events, self._outbox
        counts = self._counts
        self._drop()
        if tickets:
            rows = [ticket_row(t) for t in tickets.values()]
            self.session.connection().execute(insert(_TICKETS), rows)
            for ticket, row in zip(tickets.values(), rows, strict=True):
                attach(self.session, ticket, row)
            self._written += tickets.values()
        if messages:
            insert_runs(self.session, _MESSAGES, messages)
        super().add_attachments(attachments)
        super().add_tags(tags)
        super().add_thread_keys(thread_keys)
        for row in thread_keys:  # written now: what prefetch read must not hide them
            self._indexed.setdefault(row["key"], int(row["ticket_number"]))
        super().add_participants(participants)
        super().add_events(events)
        super().add_outbox(outbox)
        super().add_counts(
            [
                {"kind": kind, "key": key, "hour": hour, "shard": shard, "n": n}
                for (kind, key, hour, shard), n in counts.items()
            ]
        )

    # --- reads, with what is held ----------------------------------------------------------

    def held_tickets(self) -> Collection[Ticket]:
        return self._tickets.values()

    def held_messages(self) -> Collection[dict[str, Any]]:
        return self._messages

    def prefetch(self, keys: Collection[str]) -> None:
        """The tickets the batch's mail refers to, in two statements for all of it: index keys
        asked later are answered from here, and their tickets are in the session already
        (locked on PostgreSQL, in number order, as `ticket(lock=True)` would lock them one by
        one). On SQLite nobody else writes meanwhile; on PostgreSQL a key another node commits
        during the batch is missed, as it would be a moment before a per-mail lookup."""
        keys = [k for k in keys if k not in self._asked]
        if not keys:
            return
        found = super().thread_tickets(keys)
        self._asked.update(keys)
        self._indexed.update(found)
        numbers = set(found.values()) - set(self._loaded) - set(self._tickets)
        if numbers:
            stmt = select(Ticket).where(Ticket.number.in_(sorted(numbers))).order_by(Ticket.number)
            for ticket in self.session.scalars(dialect.locked(self.session, stmt)):
                self._loaded[ticket.number] = ticket

    def ticket(self, number: int, lock: bool = False) -> Ticket | None:
        held = self._tickets.get(number)
        if held is not None:
            return held
        loaded = self._loaded.get(number)
        if loaded is not None:  # and locked, on PostgreSQL
            return loaded
        return super().ticket(number, lock)

    def thread_tickets(self, keys: Collection[str]) -> dict[str, int]:
        found = super().thread_tickets([k for k in keys if k not in self._asked])
        for key in keys:
            if key in self._indexed:
                found[key] = self._indexed[key]
            elif key not in found and key in self._thread_keys:
                found[key] = int(self._thread_keys[key]["ticket_number"])
        return found

    # a ticket the batch holds has nothing written yet: its rows are all here

    def participants(self, number: int) -> list[str]:
        found = [] if number in self._tickets else super().participants(number)
        return found + [a for (n, a) in self._participants if n == number and a not in found]

    def is_participant(self, number: int, address: str) -> bool:
        if (number, address) in self._participants:
            return True
        return number not in self._tickets and super().is_participant(number, address)

    def events(self, number: int) -> list[Event]:
        held = [Event(**row) for row in self._events if row["ticket_number"] == number]
        written = [] if number in self._tickets else super().events(number)
        # held rows get the highest ids when written: a stable sort by time puts them where
        # (at, id) will
        return sorted([*written, *held], key=lambda e: e.at)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """One mail of the batch in a savepoint: when the block raises, what it wrote is undone
        and the error passes on, a unique key taken by someone else as `DuplicateKey`."""
        self.flush()
        nested = self.session.begin_nested()
        mark, self._written, indexed = self.ids.mark(), [], dict(self._indexed)
        try:
            yield
            self.flush()
            nested.commit()
        except IntegrityError as exc:
            self._undo(nested, mark, indexed)
            raise DuplicateKey(str(exc.orig)) from exc
        except BaseException:
            self._undo(nested, mark, indexed)
            raise

    def _undo(
        self, nested: orm.SessionTransaction, mark: dict[str, int], indexed: dict[str, int]
    ) -> None:
        # the tickets of a failed mail are gone with the savepoint: out of the session too, or
        # the next ticket given the same number would meet them in its identity map
        for ticket in self._written:
            if ticket in self.session:
                self.session.expunge(ticket)
        self._written, self._indexed = [], indexed
        self._drop()
        nested.rollback()
        self.ids.reset(mark)
