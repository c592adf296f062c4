"""IMAP ingest throughput: 5,000 generated mails fetched from a private local Dovecot.

    python bench/imap_bench.py [--count 5000] [--batch 100] [--after seen] [--database URL]

APPENDs the bench mix (bench/mixgen.py) to a fresh Dovecot with MULTIAPPEND, then times one poller
pass (`FolderPoller.poll_once`: fetch in batches with BODY.PEEK[], group commit, after-action,
checkpoint) until every message is ingested. Prints msgs/s and total seconds; target < 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mixgen import generate
from bench.servers.dovecot import PASSWORD, USER, DovecotServer, missing_reason
from mailbridge.app import App
from mailbridge.config import parse_settings
from mailbridge.envelope import Outcome, Source
from mailbridge.sources.imap.poller import FolderPoller, watches

CONFIG = """
[database]
url = "{url}"

[smtp]
addresses = ["support@example.com"]

[tickets]
max_new_per_sender_per_hour = 1000000  # a benchmark, not a flood

[[imap]]
name = "bench"
host = "127.0.0.1"
port = {port}
tls = "none"
username = "{user}"
password_env = "MB_BENCH_IMAP_PASSWORD"
after = "{after}"
batch_size = {batch}
"""


def run(count: int, batch: int, after: str, database: str, tmp: str) -> dict[str, object]:
    os.environ["MB_BENCH_IMAP_PASSWORD"] = PASSWORD
    with DovecotServer() as server:
        mails = list(generate(count))
        started = time.perf_counter()
        server.append_many(mails)
        appended = time.perf_counter() - started

        url = database or f"sqlite:///{tmp}/bench.db"
        text = CONFIG.format(url=url, port=server.port, user=USER, after=after, batch=batch)
        app = App.build(parse_settings(text, "bench.toml"))
        outcomes: dict[str, int] = {}

        def count_outcome(outcome: Outcome, _source: Source, _seconds: float) -> None:
            outcomes[outcome.outcome] = outcomes.get(outcome.outcome, 0) + 1

        app.ingestor.on_outcome = count_outcome
        core = [0.0]  # seconds inside ingest (parse, rules, commit): the rest is IMAP
        accept_many = app.ingestor.accept_many

        def timed_accept_many(items: list) -> list:
            started = time.perf_counter()
            try:
                return accept_many(items)
            finally:
                core[0] += time.perf_counter() - started

        app.ingestor.accept_many = timed_accept_many  # type: ignore[method-assign]
        poller = FolderPoller(
            app, watches(app.settings.imap[0])[0], "bench", app.settings.cluster.lease_ttl
        )
        started = time.perf_counter()
        poller.poll_once()
        elapsed = time.perf_counter() - started
        app.close()
    return {
        "messages": count,
        "append_s": round(appended, 2),
        "ingest_s": round(elapsed, 2),
        "msgs_per_s": round(count / elapsed, 1),
        "in_ingest_s": round(core[0], 2),
        "in_imap_s": round(elapsed - core[0], 2),
        "target_met": elapsed < 10.0,
        **outcomes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--after", default="seen", help="seen | delete | move:Processed")
    ap.add_argument("--database", default="", help="default: a fresh SQLite file")
    args = ap.parse_args()
    if reason := missing_reason():
        sys.exit(f"imap_bench: {reason}")
    with tempfile.TemporaryDirectory(prefix="mb-imap-bench-") as tmp:
        result = run(args.count, args.batch, args.after, args.database, tmp)
    print(" ".join(f"{key}={value}" for key, value in result.items()))


if __name__ == "__main__":
    main()
