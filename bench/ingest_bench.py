"""Offline ingest throughput: a generated 10,000-mail mix through the same pipeline as `mailbridge ingest`.

    python bench/ingest_bench.py [--count 10000] [--database URL] [--batch 200] [--profile]
    python bench/ingest_bench.py --queues [--rounds 3]

Prints messages/s and peak RSS. Uses group commits like the CLI (`[database] batch_size`).
`--queues` compares the plain config with one of two queues (round-robin assignment) and five
filters (SPEC 7): runs alternate between the two so a loaded machine weighs on both alike, and
the medians are printed.
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


def build(url: str, batch: int, queues: bool = False) -> App:
    text = f'[database]\nurl = "{url}"\nbatch_size = {batch}\n[smtp]\naddresses = ["support@example.com"]\n'
    # the same agents either way: members must be agents, and agents cost classification time
    return App.build(parse_settings(text + AGENTS + (QUEUES if queues else ""), "bench.toml"))


def run(
    url: str, count: int, batch: int, profile: bool = False, queues: bool = False
) -> dict[str, float]:
    mails = list(generate(count))
    app = build(url, batch, queues)
    source = Source("file", "bench", live=False)
    env = Envelope()
    outcomes: dict[str, int] = {}

    def work() -> None:
        for start in range(0, len(mails), batch):
            for out in app.ingestor.accept_many(
                [(raw, env, source) for raw in mails[start : start + batch]]
            ):
                outcomes[out.outcome] = outcomes.get(out.outcome, 0) + 1

    started, cpu_started = time.perf_counter(), time.process_time()
    if profile:
        import cProfile
        import pstats

        cProfile.runctx("work()", globals(), locals(), "/tmp/ingest.prof")
        pstats.Stats("/tmp/ingest.prof").sort_stats("tottime").print_stats(30)
    else:
        work()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    app.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "messages": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "cpu_rate": count / cpu,
        "peak_rss_mb": rss_mb,
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
    args = ap.parse_args()
    if args.queues:
        compare(args.count, args.batch, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/bench.db"
        result = run(url, args.count, args.batch, args.profile)
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
                result = run(f"sqlite:///{tmp}/bench.db", count, batch, queues=queues)
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
