"""Ingest rate with many tickets already stored vs an empty database.

    python bench/scale_bench.py [--tickets 1000000] [--count 3000] [--database URL]

Seeds tickets, their first messages and Message-ID index rows with set-based SQL (minutes, not
hours), then ingests the same generated mix into the empty and the full database.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench.mixgen import generate
from mailbridge.app import App
from mailbridge.config import parse_settings
from mailbridge.envelope import Envelope, Source

SEED_SQLITE = [
    """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
    INSERT INTO tickets (number, token, status, subject, customer, customer_name, mailbox, created_at,
                         updated_at, last_activity_at)
    SELECT i, printf('seed%012d', i), CASE i % 4 WHEN 0 THEN 'closed' WHEN 1 THEN 'answered'
           WHEN 2 THEN 'open' ELSE 'resolved' END, 'seeded ticket ' || i, 'seed' || (i % 50000) || '@old.example',
           '', 'seed', '2025-01-01 00:00:00', '2025-01-01 00:00:00', '2025-01-01 00:00:00' FROM n""",
    """INSERT INTO messages (ticket_number, direction, author_kind, message_id, dedup_key, content_hash,
                          from_addr, from_name, to_addrs, cc_addrs, subject, stored_at, source, verdict,
                          size, body_text, raw)
    SELECT number, 'inbound', 'customer', 'seed' || number || '@old.example', printf('%064d', number),
           'x', customer, '', 'support@example.com', '', subject, created_at, 'seed', '', 10, 'seed', x'00'
    FROM tickets""",
    """INSERT INTO thread_keys (key, message_id, ticket_number)
    SELECT printf('k%063d', number), 'seed' || number || '@old.example', number FROM tickets""",
    "ANALYZE",
]
SEED_PG = [
    """INSERT INTO tickets (number, token, status, subject, customer, customer_name, mailbox, created_at,
                         updated_at, last_activity_at)
    SELECT i, 'seed' || lpad(i::text, 12, '0'), (ARRAY['closed','answered','open','resolved'])[i % 4 + 1],
           'seeded ticket ' || i, 'seed' || (i % 50000) || '@old.example', '', 'seed',
           '2025-01-01Z', '2025-01-01Z', '2025-01-01Z' FROM generate_series(1, :count) AS i""",
    "SELECT setval(pg_get_serial_sequence('tickets', 'number'), :count)",
    """INSERT INTO messages (ticket_number, direction, author_kind, message_id, dedup_key, content_hash,
                          from_addr, from_name, to_addrs, cc_addrs, subject, stored_at, source, verdict,
                          size, body_text, raw)
    SELECT number, 'inbound', 'customer', 'seed' || number || '@old.example', lpad(number::text, 64, '0'),
           'x', customer, '', 'support@example.com', '', subject, created_at, 'seed', '', 10, 'seed', '\\x00'
    FROM tickets""",
    """INSERT INTO thread_keys (key, message_id, ticket_number)
    SELECT 'k' || lpad(number::text, 63, '0'), 'seed' || number || '@old.example', number FROM tickets""",
    "ANALYZE",
]


def build(url: str) -> App:
    return App.build(parse_settings(f'[database]\nurl = "{url}"\nbatch_size = 200\n', "bench.toml"))


def seed(app: App, count: int) -> float:
    started = time.perf_counter()
    statements = SEED_PG if app.store.dialect == "postgresql" else SEED_SQLITE
    with app.store.engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {"count": count})
    return time.perf_counter() - started


def ingest_rate(app: App, mails: list[bytes]) -> float:
    source, env = Source("file", "bench", live=False), Envelope()
    started = time.perf_counter()
    for i in range(0, len(mails), 200):
        app.ingestor.accept_many([(m, env, source) for m in mails[i : i + 200]])
    return len(mails) / (time.perf_counter() - started)


def run(tickets: int, count: int, url_empty: str, url_full: str) -> dict[str, float]:
    mails = list(generate(count, seed=11))
    empty = build(url_empty)
    empty_rate = ingest_rate(empty, mails)
    empty.close()
    full = build(url_full)
    seed_seconds = seed(full, tickets)
    full_rate = ingest_rate(full, mails)
    full.close()
    return {
        "tickets": tickets,
        "seed_seconds": seed_seconds,
        "empty_rate": empty_rate,
        "full_rate": full_rate,
        "ratio": full_rate / empty_rate,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--count", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            args.tickets, args.count, f"sqlite:///{tmp}/empty.db", f"sqlite:///{tmp}/full.db"
        )
    print(
        " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
