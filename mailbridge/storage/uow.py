"""The unit of work and the batch: storage's session, and where a transaction's rows wait.

A unit of work is one transaction (`Store.unit()`). A batch (`Store.batch()`) is one transaction
for many mails, the group commit every source uses. Three kinds of rows nobody needs an id of --
events, participants and the Message-ID index -- are written through `session.rows`: a unit
writes them at once; a batch holds them back and writes each table with one executemany before
it commits or one of its savepoints ends. The reads of those tables are methods of the same
object, so a read inside a batch sees the rows it holds: there is no mode to remember.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Engine, insert, orm, select
from sqlalchemy.exc import IntegrityError

from mailbridge.errors import DuplicateKey
from mailbridge.storage import dialect
from mailbridge.storage.models import Event, Participant, ThreadKey, Ticket, table_of

_PARTICIPANTS = table_of(Participant)
_THREAD_KEYS = table_of(ThreadKey)


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
    """Events, participants and Message-ID index rows of a unit of work, written at once, and
    every read of them that a transaction makes about its own tickets."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.execute(insert(Event), rows)

    def add_participants(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (ticket_number, address, role); an address already on the ticket is kept."""
        dialect.insert_ignore(self.session, _PARTICIPANTS, rows)

    def add_thread_keys(self, rows: list[dict[str, Any]]) -> None:
        """Rows of (key, message_id, ticket_number); a key already indexed keeps its ticket."""
        dialect.insert_ignore(self.session, _THREAD_KEYS, rows)

    def thread_tickets(self, keys: Collection[str]) -> dict[str, int]:
        """Index key -> ticket number, for the keys indexed."""
        stmt = select(ThreadKey.key, ThreadKey.ticket_number).where(ThreadKey.key.in_(list(keys)))
        return {k: n for k, n in self.session.execute(stmt)}

    def participants(self, number: int) -> list[str]:
        """The ticket's addresses, in the order they joined."""
        return list(
            self.session.scalars(
                select(Participant.address)
                .where(Participant.ticket_number == number)
                .order_by(Participant.id)
            )
        )

    def is_participant(self, number: int, address: str) -> bool:
        stmt = select(Participant.id).where(
            Participant.ticket_number == number, Participant.address == address
        )
        return self.session.scalar(stmt) is not None

    def events(self, number: int) -> list[Event]:
        """The ticket's events, oldest first."""
        stmt = select(Event).where(Event.ticket_number == number).order_by(Event.at, Event.id)
        return list(self.session.scalars(stmt))


class Batch(Rows):
    """Many mails in one transaction. Its rows wait here and are written once per table
    (`flush`), instead of one statement per mail; the reads see them meanwhile.

    `savepoint()` runs one mail so that its failure undoes only its own rows, held ones included.
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self._events: list[dict[str, Any]] = []
        self._participants: dict[tuple[int, str], dict[str, Any]] = {}
        self._thread_keys: dict[str, dict[str, Any]] = {}

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        self._events.extend(rows)

    def add_participants(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._participants.setdefault((row["ticket_number"], row["address"]), row)

    def add_thread_keys(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._thread_keys.setdefault(row["key"], row)

    def thread_tickets(self, keys: Collection[str]) -> dict[str, int]:
        found = super().thread_tickets(keys)
        for key in keys:
            if key not in found and key in self._thread_keys:
                found[key] = int(self._thread_keys[key]["ticket_number"])
        return found

    def participants(self, number: int) -> list[str]:
        found = super().participants(number)
        return found + [a for (n, a) in self._participants if n == number and a not in found]

    def is_participant(self, number: int, address: str) -> bool:
        return (number, address) in self._participants or super().is_participant(number, address)

    def events(self, number: int) -> list[Event]:
        held = [Event(**row) for row in self._events if row["ticket_number"] == number]
        # held rows get the highest ids when written: a stable sort by time puts them where
        # (at, id) will
        return sorted([*super().events(number), *held], key=lambda e: e.at)

    def flush(self) -> None:
        """Write the rows held so far; the batch does it before it commits."""
        thread_keys, participants, events = (
            list(self._thread_keys.values()),
            list(self._participants.values()),
            self._events,
        )
        self._drop()
        super().add_thread_keys(thread_keys)
        super().add_participants(participants)
        super().add_events(events)

    def _drop(self) -> None:
        self._events, self._participants, self._thread_keys = [], {}, {}

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """One mail of the batch in a savepoint: when the block raises, what it wrote is undone
        and the error passes on, a unique key taken by someone else as `DuplicateKey`."""
        self.flush()
        nested = self.session.begin_nested()
        try:
            yield
            self.flush()
            nested.commit()
        except IntegrityError as exc:
            self._drop()
            nested.rollback()
            raise DuplicateKey(str(exc.orig)) from exc
        except BaseException:
            self._drop()
            nested.rollback()
            raise
