"""The whole benchmark suite in one command: every figure of the performance issue beside its target.

    python bench/run_all.py [--quick] [--soak-minutes 30] [--update-readme]

Needs PostgreSQL for the PostgreSQL rows (`MAILBRIDGE_BENCH_DATABASE_URL`, default
postgresql://postgres@127.0.0.1/postgres; a fresh database is created and dropped) and Dovecot
for the IMAP row; a missing one is reported as such, not faked.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bigmail_bench, ingest_bench, scale_bench, smtp_bench  # noqa: E402

PG_ADMIN = os.environ.get(
    "MAILBRIDGE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"
)

Row = tuple[str, str, str, bool | None]  # what, measured, target, met (None: not measured)


@contextmanager
def pg_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(PG_ADMIN).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"mb_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def offline(count: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        r = ingest_bench.run(f"sqlite:///{tmp}/bench.db", count, 200)
    rows.append(
        (
            f"offline ingest, {count:,} mixed mails, SQLite",
            f"{r['rate']:.0f} msg/s (peak RSS {r['peak_rss_mb']:.0f} MB)",
            "≥ 800 msg/s",
            r["rate"] >= 800,
        )
    )
    try:
        with pg_database() as url:
            r = ingest_bench.run(url, count, 200)
        rows.append(
            (
                f"offline ingest, {count:,} mixed mails, PostgreSQL",
                f"{r['rate']:.0f} msg/s",
                "≥ 400 msg/s",
                r["rate"] >= 400,
            )
        )
    except Exception as exc:  # no server: say so
        rows.append(
            (
                "offline ingest, PostgreSQL",
                f"not measured: {exc.__class__.__name__}",
                "≥ 400 msg/s",
                None,
            )
        )
    return rows


def smtp(duration: float) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mb-bench-") as tmp:
        daemon = smtp_bench.Daemon(Path(tmp), f"sqlite:///{tmp}/mailbridge.db")
        messages = smtp_bench.Messages()
        try:
            fixed = smtp_bench.run_fixed_rate(daemon.port, 200, duration, 20, messages)
            best = smtp_bench.run_max(daemon.port, duration, 50, messages)
        finally:
            daemon.stop()
    p99 = smtp_bench.pct(fixed.latencies, 99) * 1000
    span = max(fixed.last - fixed.first, 1e-9)
    rows.append(
        (
            "SMTP p99 end of DATA → 250 at 200 msg/s offered",
            f"{p99:.0f} ms (sustained {len(fixed.latencies) / span:.0f} msg/s)",
            "< 50 ms",
            p99 < 50,
        )
    )
    rate = len(best.latencies) / max(best.last - best.first, 1e-9)
    rows.append(
        (
            "SMTP sustained, 50 concurrent clients",
            f"{rate:.0f} msg/s (p99 {smtp_bench.pct(best.latencies, 99) * 1000:.0f} ms)",
            "≥ 1,000 msg/s",
            rate >= 1000,
        )
    )
    return rows


def imap() -> list[Row]:
    from bench import imap_bench
    from bench.servers.dovecot import missing_reason

    if reason := missing_reason():
        return [("IMAP, 5,000 messages from Dovecot", f"not measured: {reason}", "< 10 s", None)]
    with tempfile.TemporaryDirectory(prefix="mb-imap-bench-") as tmp:
        r = imap_bench.run(5000, 100, "seen", "", tmp)
    seconds = float(r["ingest_s"])  # type: ignore[arg-type]
    return [
        (
            "IMAP, 5,000 messages from local Dovecot, SQLite",
            f"{seconds:.1f} s ({r['msgs_per_s']} msg/s)",
            "< 10 s",
            seconds < 10,
        )
    ]


def scale(tickets: int, count: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        r = scale_bench.run(tickets, count, f"sqlite:///{tmp}/empty.db", f"sqlite:///{tmp}/full.db")
    ratio = float(r["ratio"])
    return [
        (
            f"ingest with {tickets:,} tickets stored vs empty, SQLite",
            f"{r['full_rate']:.0f} vs {r['empty_rate']:.0f} msg/s ({ratio:.0%})",
            "within 20 %",
            ratio >= 0.8,
        )
    ]


def bigmail() -> list[Row]:
    r = bigmail_bench.run(50)
    return [
        (
            "peak RSS ingesting one 50 MB message",
            f"{r['peak_rss_mb']:.0f} MB ({r['seconds']:.1f} s)",
            "< 250 MB",
            r["peak_rss_mb"] < 250,
        )
    ]


def soak(minutes: float) -> list[Row]:
    """SMTP at a steady 50 msg/s; the daemon's RSS is sampled each interval."""
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mb-soak-") as tmp:
        daemon = smtp_bench.Daemon(Path(tmp), f"sqlite:///{tmp}/mailbridge.db")
        messages = smtp_bench.Messages()
        try:
            rounds = max(2, int(minutes * 2))
            for _ in range(rounds):
                smtp_bench.run_fixed_rate(daemon.port, 50, 30, 10, messages)
                status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
                samples.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)  # type: ignore[union-attr]
        finally:
            daemon.stop()
    # growth after warm-up: the second sample against the last
    growth = samples[-1] - samples[1] if len(samples) > 2 else samples[-1] - samples[0]
    return [
        (
            f"RSS over a {minutes:g}-minute SMTP soak at 50 msg/s",
            f"{samples[0]:.0f} → {samples[-1]:.0f} MB (after warm-up {growth:+.0f} MB)",
            "no growth",
            growth < 10,
        )
    ]


def table(rows: list[Row]) -> str:
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = ["| measurement | result | target | |", "|---|---|---|---|"]
    lines += [f"| {what} | {got} | {target} | {mark[met]} |" for what, got, target, met in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--soak-minutes", type=float, default=0, help="0: skip the soak")
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()
    count, tickets, duration = (2000, 50_000, 5.0) if args.quick else (10_000, 1_000_000, 20.0)
    steps: list[Callable[[], list[Row]]] = [
        lambda: offline(count),
        lambda: smtp(duration),
        imap,
        lambda: scale(tickets, 3000),
        bigmail,
    ]
    if args.soak_minutes:
        steps.append(lambda: soak(args.soak_minutes))
    rows: list[Row] = []
    for step in steps:
        started = time.perf_counter()
        got = step()
        rows += got
        for what, result, target, _ in got:
            print(
                f"{what}: {result} (target {target}) [{time.perf_counter() - started:.0f} s]",
                file=sys.stderr,
            )
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    out = f"Measured on {machine} with `python bench/run_all.py{' --quick' if args.quick else ''}`.\n\n{table(rows)}"
    print(out)
    if args.update_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = "<!-- bench-results -->", "<!-- /bench-results -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{out}\n{end}{tail}")


if __name__ == "__main__":
    main()
