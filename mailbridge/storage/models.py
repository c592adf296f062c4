"""The schema: typed SQLAlchemy 2 models. Alembic migrations under `migrations/` build the same tables."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from mailbridge.clock import system_clock


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite stores naive values and hands them back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(system_clock().tzinfo)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=system_clock().tzinfo)
        return value.astimezone(system_clock().tzinfo)


class CleanText(TypeDecorator[str]):
    """Text both backends accept: PostgreSQL refuses NUL bytes and lone surrogates that mail can carry."""

    impl: type[String] = Text  # CleanString narrows it to String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        if value is None:
            return None
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value


class CleanString(CleanText):
    impl = String
    cache_ok = True


ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_status_activity", "status", "last_activity_at"),
        Index("ix_tickets_customer_created", "customer", "created_at"),
        Index("ix_tickets_queue_status", "queue", "status"),
        Index("ix_tickets_owner_status", "owner", "status"),
        {"sqlite_autoincrement": True},
    )

    # the ticket number is its primary key: unique under any concurrency, never reused
    number: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(CleanString(32), unique=True)
    status: Mapped[str] = mapped_column(CleanString(16))
    status_before: Mapped[str | None] = mapped_column(CleanString(16))
    subject: Mapped[str] = mapped_column(CleanText, default="")
    customer: Mapped[str] = mapped_column(CleanString(320))
    customer_name: Mapped[str] = mapped_column(CleanText, default="")
    mailbox: Mapped[str] = mapped_column(CleanString(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # last message or status change: what idle rules measure from
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)
    postponed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    follow_up_of: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.number", ondelete="SET NULL"), index=True
    )
    thread_index: Mapped[str | None] = mapped_column(CleanString(64), index=True)
    # SPEC 7: the department, its one owning agent (None: unowned), and the priority
    queue: Mapped[str] = mapped_column(CleanString(64), default="support")
    owner: Mapped[str | None] = mapped_column(CleanString(320))
    priority: Mapped[str] = mapped_column(CleanString(8), default="normal")
    # SLA (SPEC 8): the due times of the ticket's [[sla]], recomputed by the sweep from its
    # events after every status change (sla_stale); sla_due is the earliest target still to
    # watch, so the breach sweep is one indexed range query
    sla_name: Mapped[str | None] = mapped_column(CleanString(100))
    first_response_due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_response_due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution_due: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sla_due: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    sla_breached: Mapped[str | None] = mapped_column(
        CleanString(100), index=True
    )  # targets, comma-separated
    sla_stale: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=true(), index=True
    )

    participants: Mapped[list[Participant]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", passive_deletes=True
    )


class TicketTag(Base):
    """A ticket's tags (lowercase words), a row each so `tickets --tag` is an index lookup."""

    __tablename__ = "ticket_tags"

    ticket_number: Mapped[int] = mapped_column(
        ForeignKey("tickets.number", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(CleanString(64), primary_key=True, index=True)


class QueueCursor(Base):
    """A queue's round-robin position: bumped by `UPDATE ... RETURNING` in the transaction that
    creates the ticket, so the row lock orders concurrent nodes and a rollback returns the turn."""

    __tablename__ = "queue_cursors"

    queue: Mapped[str] = mapped_column(CleanString(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)


class Participant(Base):
    """Addresses on a ticket besides agents: the customer and whoever was in To/Cc with them."""

    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("ticket_number", "address"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    ticket_number: Mapped[int] = mapped_column(ForeignKey("tickets.number", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(CleanString(320), index=True)
    role: Mapped[str] = mapped_column(CleanString(16))  # customer | cc

    ticket: Mapped[Ticket] = relationship(back_populates="participants")


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    ticket_number: Mapped[int] = mapped_column(
        ForeignKey("tickets.number", ondelete="CASCADE"), index=True
    )
    direction: Mapped[str] = mapped_column(CleanString(8))  # inbound | outbound
    author_kind: Mapped[str] = mapped_column(CleanString(8))  # customer | agent | system
    message_id: Mapped[str | None] = mapped_column(CleanText)
    # sha256 of Message-ID + content hash: the same mail twice is one message
    dedup_key: Mapped[str] = mapped_column(CleanString(64), unique=True)
    content_hash: Mapped[str] = mapped_column(CleanString(64))
    from_addr: Mapped[str] = mapped_column(CleanString(320), default="")
    from_name: Mapped[str] = mapped_column(CleanText, default="")
    to_addrs: Mapped[str] = mapped_column(CleanText, default="")  # comma-separated
    cc_addrs: Mapped[str] = mapped_column(CleanText, default="")
    subject: Mapped[str] = mapped_column(CleanText, default="")
    date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(CleanString(200), default="")
    verdict: Mapped[str] = mapped_column(CleanText, default="")  # the rule that decided
    size: Mapped[int] = mapped_column(Integer)
    body_text: Mapped[str] = deferred(mapped_column(CleanText, default=""))
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary))

    attachments: Mapped[list[Attachment]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    message_pk: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(CleanText)
    content_type: Mapped[str] = mapped_column(CleanString(200))
    size: Mapped[int] = mapped_column(BigInteger)


class ThreadKey(Base):
    """Every Message-ID we have seen or sent, to the ticket it belongs to: threading's index."""

    __tablename__ = "thread_keys"

    # sha256 of the normalised Message-ID: fixed width, so any length indexes on any backend
    key: Mapped[str] = mapped_column(CleanString(64), primary_key=True)
    message_id: Mapped[str] = mapped_column(CleanText)
    ticket_number: Mapped[int] = mapped_column(
        ForeignKey("tickets.number", ondelete="CASCADE"), index=True
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    ticket_number: Mapped[int] = mapped_column(
        ForeignKey("tickets.number", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(CleanString(32))
    actor: Mapped[str] = mapped_column(CleanString(320))
    from_status: Mapped[str | None] = mapped_column(CleanString(16))
    to_status: Mapped[str | None] = mapped_column(CleanString(16))
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    detail: Mapped[str | None] = mapped_column(CleanText)


class Quarantine(Base):
    """Mail that is not on a ticket: failures (`quarantined`) and mail we chose to set aside (`ignored`)."""

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(CleanString(16))  # quarantined | ignored
    state: Mapped[str] = mapped_column(CleanString(16), default="held")  # held | released
    reason: Mapped[str] = mapped_column(CleanText)
    detail: Mapped[str] = mapped_column(CleanText, default="")
    source: Mapped[str] = mapped_column(CleanString(200), default="")
    envelope: Mapped[str] = mapped_column(CleanText, default="{}")  # JSON
    sender: Mapped[str] = mapped_column(CleanString(320), default="", index=True)
    message_id: Mapped[str | None] = mapped_column(CleanText)
    dedup_key: Mapped[str | None] = mapped_column(CleanString(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary))


class Tombstone(Base):
    """What is left of a purged ticket's mail: enough to know a late copy was already seen."""

    __tablename__ = "tombstones"

    dedup_key: Mapped[str] = mapped_column(CleanString(64), primary_key=True)
    message_id: Mapped[str | None] = mapped_column(CleanText)
    ticket_number: Mapped[int] = mapped_column(ID)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Outbox(Base):
    """Durable outbound queue: a row commits with the change that caused it, then a sender delivers it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        Index("ix_outbox_kind_rcpt_created", "kind", "rcpt_key", "created_at"),
        Index("ix_outbox_kind_created", "kind", "created_at"),  # acknowledgement limits
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    ticket_number: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.number", ondelete="SET NULL"), index=True
    )
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(CleanString(16))  # ack | notify | relay | notice | rule
    mail_from: Mapped[str] = mapped_column(CleanString(320))
    rcpt_tos: Mapped[str] = mapped_column(CleanText)  # comma-separated
    rcpt_key: Mapped[str] = mapped_column(
        CleanString(320)
    )  # first recipient, lowercased (rate limits)
    # NULL until the sender writes the mail from `spec` (JSON of a compose.Pending), just
    # before its first delivery attempt; `spec` is cleared then
    raw: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    spec: Mapped[str | None] = deferred(mapped_column(CleanText))
    state: Mapped[str] = mapped_column(CleanString(16), default="queued")  # queued | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(CleanText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxCount(Base):
    """Outbox rows of a rate-limited kind queued per hour, by recipient, domain and in all: an
    upper bound of a sliding hour's rows (see `repo.limits`). Each connection adds to rows of
    its own `shard`."""

    __tablename__ = "outbox_counts"
    __table_args__ = (Index("ix_outbox_counts_hour", "hour"),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    # the recipient (an outbox row's rcpt_key), "@" and its domain, or "*" for all
    key: Mapped[str] = mapped_column(CleanString(330), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # hours since the epoch, UTC
    shard: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class ImapFolder(Base):
    """IMAP checkpoint: the last UID committed for a folder under its UIDVALIDITY."""

    __tablename__ = "imap_folders"

    account: Mapped[str] = mapped_column(CleanString(200), primary_key=True)
    folder: Mapped[str] = mapped_column(CleanString(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Lease(Base):
    """Who polls a mailbox (or runs a singleton job); another node takes over once it expires."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(CleanString(300), primary_key=True)
    owner: Mapped[str] = mapped_column(CleanString(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # the process holding it (mailbridge.node.Incarnation); None in rows from before 0003
    incarnation: Mapped[str | None] = mapped_column(CleanString(300))


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (declarative types `__table__` only as a FromClause)."""
    return cast(Table, model.__table__)
