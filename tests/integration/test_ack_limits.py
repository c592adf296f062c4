"""The hourly acknowledgement limits' counters (storage/repo/limits.py): a sliding hour still,
across the counters' clock hours, and across the migration that introduced them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from mailbridge.storage import Session, Store, open_store, repo
from mailbridge.storage.engine import MIGRATIONS, make_engine
from mailbridge.storage.repo.limits import add_counts

NOW = datetime(2026, 12, 1, 9, 50, tzinfo=UTC)  # ten minutes before a counter's hour ends
LIMITS = (2, 3, 4)  # to the recipient, to its domain, in all
_INSERT = text(
    "INSERT INTO outbox (kind, mail_from, rcpt_tos, rcpt_key, state, attempts, next_attempt_at,"
    " created_at) VALUES ('ack', 'support@example.com', :r, :k, 'sent', 1, :at, :at)"
)


def _queue_ack(session: Session, rcpt: str, at: datetime) -> None:
    """An acknowledgement's outbox row, counted as `repo.queue_outbound` counts it."""
    row = {"kind": "ack", "rcpt_key": rcpt, "created_at": at}
    session.execute(_INSERT, {"r": rcpt, "k": rcpt, "at": at})
    add_counts(session, [row])


def _reached(store: Store, rcpt: str, now: datetime) -> str | None:
    with store.unit() as session:
        return repo.limit_reached(session, "ack", rcpt, now - timedelta(hours=1), LIMITS)


def test_limits_hold_over_a_sliding_hour_across_clock_hours(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    with store.unit() as session:
        _queue_ack(session, "a@one.example", NOW)
        _queue_ack(session, "a@one.example", NOW + timedelta(minutes=5))
        _queue_ack(session, "b@one.example", NOW + timedelta(minutes=15))  # the next clock hour
    assert _reached(store, "a@one.example", NOW + timedelta(minutes=20)) == "recipient"
    assert _reached(store, "c@one.example", NOW + timedelta(minutes=20)) == "domain"
    assert _reached(store, "d@two.example", NOW + timedelta(minutes=20)) is None
    # an hour after the first, the window has let it go, although its counter's hour is read
    assert _reached(store, "a@one.example", NOW + timedelta(minutes=61)) is None
    assert _reached(store, "c@one.example", NOW + timedelta(minutes=61)) is None
    with store.unit() as session:
        _queue_ack(session, "d@two.example", NOW + timedelta(minutes=30))
    assert _reached(store, "e@three.example", NOW + timedelta(minutes=31)) == "all"
    assert _reached(store, "e@three.example", NOW + timedelta(minutes=61)) is None
    store.close()


def test_counters_of_long_ago_are_dropped(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    with store.unit() as session:
        _queue_ack(session, "a@one.example", NOW - timedelta(days=2))
    with store.unit() as session:
        _queue_ack(session, "a@one.example", NOW)
    with store.engine.connect() as conn:
        hours = conn.execute(text("SELECT DISTINCT hour FROM outbox_counts")).scalars().all()
    assert hours == [int(NOW.timestamp()) // 3600]
    store.close()


def test_migration_counts_the_acknowledgements_queued_before_it(db_url: str) -> None:
    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    with engine.begin() as conn:
        for minutes, rcpt in ((0, "a@one.example"), (5, "a@one.example"), (9, "b@one.example")):
            at = NOW + timedelta(minutes=minutes)
            conn.execute(_INSERT, {"r": rcpt, "k": rcpt, "at": at})
    engine.dispose()

    store = open_store(db_url)  # upgrades to the counters
    later = NOW + timedelta(minutes=20)
    assert _reached(store, "a@one.example", later) == "recipient"
    assert _reached(store, "c@one.example", later) == "domain"
    with store.engine.connect() as conn:
        total = conn.execute(text("SELECT sum(n) FROM outbox_counts WHERE key = '*'")).scalar()
    assert total == 3
    store.close()
