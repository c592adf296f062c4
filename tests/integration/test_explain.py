"""Every hot query is index-backed on PostgreSQL: EXPLAIN shows an index for each of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from mailbridge.envelope import Envelope, Source
from tests.configs import MakeApp
from tests.mail import make_mail

HOT_QUERIES = {
    "thread lookup by Message-ID": "SELECT ticket_number FROM thread_keys WHERE key IN ('{k}', 'x')",
    "dedup by key": "SELECT ticket_number FROM messages WHERE dedup_key IN ('{k}', 'y')",
    "ticket by token": "SELECT number FROM tickets WHERE token = 'abcdefgh'",
    "ticket by Thread-Index": "SELECT number FROM tickets WHERE thread_index = 'aa'",
    "flood guard count": "SELECT count(*) FROM tickets WHERE customer = 'c@x' AND created_at >= '{t}'",
    "due postponements": "SELECT number FROM tickets WHERE status = 'postponed' AND postponed_until <= '{t}'",
    "idle rule sweep": "SELECT number FROM tickets WHERE status = 'answered' AND last_activity_at <= '{t}'",
    "outbox due": "SELECT id FROM outbox WHERE state = 'queued' AND next_attempt_at <= '{t}' ORDER BY next_attempt_at, id LIMIT 20",
    "ack rate limit": "SELECT count(*) FROM outbox WHERE kind = 'ack' AND rcpt_key = 'c@x' AND created_at >= '{t}'",
    "messages of a ticket": "SELECT id FROM messages WHERE ticket_number = 5",
    "events of a ticket": "SELECT id FROM events WHERE ticket_number = 5",
}


def test_hot_queries_use_indexes(make_app: MakeApp, pg_url: str) -> None:
    app = make_app(pg_url)
    src = Source("file", "explain", live=False)
    app.ingestor.accept_many([(make_mail(subject=f"m{i}"), Envelope(), src) for i in range(200)])
    when = (datetime(2026, 11, 2, tzinfo=UTC) - timedelta(hours=1)).isoformat()
    with app.store.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        key = conn.execute(text("SELECT key FROM thread_keys LIMIT 1")).scalar()
        # with sequential scans priced out, a plan without an index means there is no usable index
        conn.execute(text("SET enable_seqscan = off"))
        for name, sql in HOT_QUERIES.items():
            plan = "\n".join(
                r[0] for r in conn.execute(text("EXPLAIN " + sql.format(k=key, t=when)))
            )
            assert "Index" in plan, f"{name} is not index-backed:\n{plan}"
