"""Upgrading a database that holds mail: every row survives every migration, and ticket numbers
are never given twice, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from mailbridge.config import parse_settings
from mailbridge.envelope import Envelope
from mailbridge.ingest import Ingestor
from mailbridge.storage import open_store, repo
from mailbridge.storage.engine import make_engine
from tests.configs import mailbridge_toml
from tests.mail import make_mail
from tests.schema import at_revision
from tests.tickets import FILE

CHILDREN = ("messages", "events", "participants", "thread_keys", "attachments")


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in CHILDREN
        }
    engine.dispose()
    return found


def _mail_at_0005(url: str) -> None:
    """Two tickets with messages, an attachment, events, participants and thread keys, written
    by raw SQL in the schema of revision 0005 (the release before 0006)."""
    at_revision(url, "0005")
    engine = make_engine(url)
    now = "2026-12-01 09:00:00+00:00"
    with engine.begin() as conn:
        for n in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO tickets (number, token, status, subject, customer, customer_name,"
                    " mailbox, created_at, updated_at, last_activity_at, queue, priority)"
                    " VALUES (:n, :token, 'open', 'Old', 'c@x.example', '', 'support', :now,"
                    " :now, :now, 'support', 'normal')"
                ),
                {"n": n, "token": f"token{n}", "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO messages (id, ticket_number, direction, author_kind, message_id,"
                    " dedup_key, content_hash, from_addr, from_name, to_addrs, cc_addrs, subject,"
                    " stored_at, source, verdict, size, body_text, raw) VALUES (:n, :n,"
                    " 'inbound', 'customer', :mid, :key, 'h', 'c@x.example', '', '', '', 'Old',"
                    " :now, 'file:x', 'x', 3, 'hi', :raw)"
                ),
                {"n": n, "mid": f"m{n}@x.example", "key": f"key{n}", "now": now, "raw": b"raw"},
            )
            conn.execute(
                text(
                    "INSERT INTO events (ticket_number, at, kind, actor, from_status, to_status,"
                    " message_pk) VALUES (:n, :now, 'created', 'c@x.example', NULL, 'new', :n)"
                ),
                {"n": n, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO participants (ticket_number, address, role)"
                    " VALUES (:n, 'c@x.example', 'customer')"
                ),
                {"n": n},
            )
            conn.execute(
                text(
                    "INSERT INTO thread_keys (key, message_id, ticket_number)"
                    " VALUES (:key, :mid, :n)"
                ),
                {"n": n, "key": f"k{n}", "mid": f"m{n}@x.example"},
            )
        conn.execute(
            text(
                "INSERT INTO attachments (message_pk, filename, content_type, size)"
                " VALUES (1, 'a.txt', 'text/plain', 1)"
            )
        )
        if conn.dialect.name == "postgresql":  # where the daemon's own inserts leave them
            for table, column in (("tickets", "number"), ("messages", "id")):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), 2)")
                )
    engine.dispose()


def test_upgrading_keeps_every_row_that_refers_to_a_ticket(db_url: str) -> None:
    _mail_at_0005(db_url)
    before = _counts(db_url)
    assert before == {
        "messages": 2,
        "events": 2,
        "participants": 2,
        "thread_keys": 2,
        "attachments": 1,
    }
    open_store(db_url).close()  # what `mailbridge run` or `db upgrade` does: to the newest schema
    assert _counts(db_url) == before


def test_after_upgrading_a_purged_tickets_number_is_not_given_again(db_url: str) -> None:
    _mail_at_0005(db_url)
    store = open_store(db_url)
    settings = parse_settings(mailbridge_toml(db_url), "mailbridge.toml")
    ingestor = Ingestor(store, settings)
    with store.unit() as session:
        purged = repo.purge_ticket(session, 2, repo.get_ticket(session, 2).created_at)  # type: ignore[union-attr]
    assert purged == 1
    out = ingestor.accept(make_mail(subject="new after the upgrade"), Envelope(), FILE)
    assert out.outcome == "created" and out.ticket == 3
    store.close()
