"""Offline ingest throughput: a generated 10,000-mail mix through the same pipeline as `mailbridge ingest`.

    python bench/ingest_bench.py [--count 10000] [--database URL] [--batch 200] [--workers N] [--profile]

Prints messages/s and peak RSS. Uses group commits like the CLI (`[database] batch_size`) and,
like it, parses the next batch in `--workers` processes while one commits (default: one per
CPU; 0 parses in process).
"""

from __future__ import annotations

import argparse
import resource
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


def build(url: str, batch: int, workers: int | None = None) -> App:
    text = f'[database]\nurl = "{url}"\nbatch_size = {batch}\n[smtp]\naddresses = ["support@example.com"]\n'
    if workers is not None:
        text += f"[parse]\nworkers = {workers}\n"
    return App.build(parse_settings(text, "bench.toml"))


def run(
    url: str, count: int, batch: int, profile: bool = False, workers: int | None = None
) -> dict[str, float]:
    mails = list(generate(count))
    app = build(url, batch, workers)
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
        **outcomes,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--database", default="")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="parse processes (0: in process)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/bench.db"
        result = run(url, args.count, args.batch, args.profile, args.workers)
    print(
        " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
