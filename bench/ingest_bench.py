"""Offline ingest throughput: a generated 10,000-mail mix through the same pipeline as `mailbridge ingest`.

    python bench/ingest_bench.py [--count 10000] [--database URL] [--batch 200] [--workers N] [--profile]
    python bench/ingest_bench.py --queues [--rounds 3]

Prints messages/s and peak RSS. Uses group commits like the CLI (`[database] batch_size`) and,
like it, parses the next batch in `--workers` processes while one commits (default: one per
CPU; 0 parses in process).
`--queues` compares the plain config with one of two queues (round-robin assignment) and five
filters (SPEC 7), parsing in process: runs alternate between the two so a loaded machine weighs
on both alike, and the medians are printed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mixgen import generate
from mailbridge.app import App
from mailbridge.config import parse_settings
from mailbridge.envelope import Envelope, Source
from mailbridge.parse_pool import ParsePool, parse_ahead

# two queues, five filters: the mix goes to support@, so every mail runs every filter and the
# support queue assigns round robin (a cursor row update per new ticket)
AGENTS = """
[agents]
addresses = ["alice@example.com", "bob@example.com"]
"""
QUEUES = """
[[queues]]
name = "support"
addresses = ["support@example.com"]
members = ["alice@example.com", "bob@example.com"]
assign = "round_robin"
[[queues]]
name = "billing"
addresses = ["billing@example.com"]
[[filters]]
name = "vip"
match = { from = "@bigcustomer.example" }
set = { tags = ["vip"], priority = "high" }
[[filters]]
name = "invoices"
match = { subject = "invoice|refund|payment" }
set = { queue = "billing", tags = ["billing"] }
[[filters]]
name = "outage"
match = { subject = "down|outage|urgent", to = "support@example.com" }
set = { priority = "urgent" }
[[filters]]
name = "spamassassin"
match = { header = "X-Spam-Status", regex = "^Yes," }
set = { status = "spam" }
[[filters]]
name = "rspamd"
match = { header = "X-Spam", regex = "^yes" }
set = { status = "spam" }
"""


def build(url: str, batch: int, workers: int | None = None, queues: bool = False) -> App:
    text = f'[database]\nurl = "{url}"\nbatch_size = {batch}\n[smtp]\naddresses = ["support@example.com"]\n'
    if workers is not None:
        text += f"[parse]\nworkers = {workers}\n"
    # the same agents either way: members must be agents, and agents cost classification time
    return App.build(parse_settings(text + AGENTS + (QUEUES if queues else ""), "bench.toml"))


def run(
    url: str,
    count: int,
    batch: int,
    profile: bool = False,
    workers: int | None = None,
    queues: bool = False,
) -> dict[str, float]:
    mails = list(generate(count))
    app = build(url, batch, workers, queues)
    pool = ParsePool.from_settings(app.settings, inline=False)
    if pool is not None:
        pool.open().parse_many([mails[0]] * pool.workers)  # started, as the CLI's is by now
    source = Source("file", "bench", live=False)
    env = Envelope()
    outcomes: dict[str, int] = {}

    def work() -> None:
        batches = (
            [(raw, env, source) for raw in mails[start : start + batch]]
            for start in range(0, len(mails), batch)
        )
        for items, results in parse_ahead(pool, batches):
            for out in app.ingestor.accept_many(items, results):
                outcomes[out.outcome] = outcomes.get(out.outcome, 0) + 1

    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        cProfile.runctx("work()", globals(), locals(), "/tmp/ingest.prof")
        pstats.Stats("/tmp/ingest.prof").sort_stats("tottime").print_stats(30)
    else:
        work()
    elapsed = time.perf_counter() - started
    app.close()
    if pool is not None:
        pool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    return {
        "messages": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "peak_rss_mb": rss_mb,
        # this process only (parse workers excluded): the work left on the committing core
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "cpu_rate": count / max(usage.ru_utime + usage.ru_stime - cpu_before, 1e-9),
        **outcomes,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--database", default="")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--queues", action="store_true", help="compare without and with queues")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="parse processes (0: in process)")
    args = ap.parse_args()
    if args.queues:
        compare(args.count, args.batch, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/bench.db"
        result = run(url, args.count, args.batch, args.profile, args.workers)
    print(
        " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


def compare(count: int, batch: int, rounds: int) -> None:
    """Medians of `rounds` runs each; a warm-up of each first, and the order flipped every round,
    so neither side always pays for a cold cache. CPU time per message is printed beside the wall
    clock: on a loaded machine it moves far less."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i in range(rounds + 1):
        for queues in (False, True) if i % 2 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                result = run(f"sqlite:///{tmp}/bench.db", count, batch, workers=0, queues=queues)
            if i:  # round 0 warms up
                rates[queues].append(result["rate"])
                cpu[queues].append(result["cpu_rate"])
    for queues, label in ((False, "without queues"), (True, "two queues, five filters")):
        runs = ", ".join(f"{r:.0f}" for r in rates[queues])
        print(
            f"{label}: {statistics.median(rates[queues]):.0f} msg/s wall (runs: {runs}), "
            f"{statistics.median(cpu[queues]):.0f} msg/s of CPU time"
        )
    for name, values in (("wall", rates), ("cpu", cpu)):
        plain, routed = statistics.median(values[False]), statistics.median(values[True])
        print(f"difference ({name}): {(routed - plain) / plain:+.1%}")


if __name__ == "__main__":
    main()
