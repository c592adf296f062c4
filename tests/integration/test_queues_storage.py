"""Queues in storage: the migration from the previous release, and the round-robin cursor."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from mailbridge.storage import open_store, repo
from mailbridge.storage.engine import make_engine
from tests.schema import at_revision

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_migration_upgrades_a_database_of_the_previous_release(db_url: str) -> None:
    at_revision(db_url, "0002")  # the schema the current release creates
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tickets (token, status, subject, customer, customer_name, mailbox,"
                " created_at, updated_at, last_activity_at)"
                " VALUES ('abcdefghijklmnop', 'open', 'Old', 'c@x.example', '', 'support',"
                " :now, :now, :now)"
            ),
            {"now": NOW},
        )
    engine.dispose()

    store = open_store(db_url, first_queue="billing")
    with store.unit() as session:
        [(ticket, _)] = repo.list_tickets(session)
        assert (ticket.queue, ticket.owner, ticket.priority) == ("billing", None, "normal")
        assert repo.tags_of(session, [ticket.number]) == {}
        repo.add_tags(session, ticket.number, ["vip"])
        assert [t.number for t, _ in repo.list_tickets(session, queue="billing", tag="vip")] == [
            ticket.number
        ]
        assert repo.list_tickets(session, queue="billing", owner="a@example.com") == []
    store.close()


def test_round_robin_cursor_survives_a_restart(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    with store.unit() as session:
        assert [repo.take_turn(session, "billing") for _ in range(3)] == [0, 1, 2]
    store.close()
    store = open_store(sqlite_url)
    with store.unit() as session:
        assert repo.take_turn(session, "billing") == 3
        assert repo.take_turn(session, "support") == 0  # each queue has its own
    store.close()
