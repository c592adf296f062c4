"""What acknowledgements and notifications cost per new-ticket mail, in process CPU time.

    python bench/ack_cost.py [--count 1000] [--repeats 3] [--batch 10] [--senders one|many]
                             [--database-url URL] [--profile off|on|deliver]

Three rounds per repeat, interleaved, each on a fresh database (the sink in a process of its own): (a) `off`: live ingest of
`count` small new-ticket mails with acknowledgements off and nobody to notify; (b) `on`: the
same with `[tickets] acknowledge = true` and `[agents] notify`, which queues an acknowledgement
and a notification per mail into the outbox; (c) `deliver`: the outbox sender delivering the
rows (b) queued to a real aiosmtpd sink (bench/servers/smtp_sink.py). Prints, per round, process
CPU (time.process_time) and wall clock per message, then the medians and the on/off ratio.

`--senders one` sends every mail from one address, as `smtp-source` does in bench/anchors.py
(the acknowledgement limits are raised so each mail is acknowledged); `many` gives each mail its
own sender and domain under the default limits. `--root DIR` measures another checkout's
`mailbridge` (e.g. `git archive` of an older commit) with this script and sink. `--profile ROUND` writes a cProfile of one more
round of that kind to `ack_cost.<round>.prof` and prints its top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ is not a package on the path then


# the sink runs in a process of its own, so the sender's CPU time is the sender's alone
SINK = """
import sys
from bench.servers.smtp_sink import SmtpSink
with SmtpSink.running() as sink:
    print(sink.port, flush=True)
    for line in sys.stdin:
        if line.strip() == "clear":
            sink.clear()
        print(len(sink.received), flush=True)
"""


class Sink:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SINK],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def ask(self, command: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


CONFIG = """
[database]
url = "{url}"
[smtp]
addresses = ["support@example.com"]
[agents]
addresses = ["alice@example.com"]
notify = {notify}
[tickets]
max_new_per_sender_per_hour = 10000000
acknowledge = {ack}
{limits}
[outbound]
smarthost = "127.0.0.1"
port = {port}
from_address = "support@example.com"
[log]
level = "info"
"""
# what bench/anchors.py sets: every mail of a round comes from one address
HIGH_LIMITS = """ack_max_per_sender_per_hour = 10000000
ack_max_per_domain_per_hour = 10000000
ack_max_per_hour = 10000000"""
BODY = "Hello support,\n\nthe printer on the third floor prints only blank pages.\n" * 30


def mail(n: int, sender: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <{sender}>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Printer problem {n}"
    msg["Message-ID"] = f"<ack-cost-{n}@customer.example>"
    msg["Date"] = "Mon, 02 Nov 2026 08:00:00 +0000"
    msg.set_content(BODY)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def sender_of(n: int, senders: str) -> str:
    return "customer@client.test" if senders == "one" else f"c{n}@customer{n}.example"


@contextmanager
def measured(into: dict[str, float], count: int) -> Iterator[None]:
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    into["cpu_ms"] = (time.process_time() - cpu) * 1000 / count
    into["wall_ms"] = (time.perf_counter() - wall) * 1000 / count


class Round:
    """One fresh database: ingest `count` mails (acknowledged or not), then optionally deliver."""

    def __init__(self, args: argparse.Namespace, work: Path, sink: Sink, ack: bool) -> None:
        from mailbridge.app import App
        from mailbridge.clock import FixedClock
        from mailbridge.config import parse_settings
        from mailbridge.logging_setup import configure

        self.args, self.ack = args, ack
        url = args.database_url or f"sqlite:///{work / f'r{time.monotonic_ns()}.db'}"
        if args.database_url:
            reset_database(url)
        text = CONFIG.format(
            url=url,
            port=sink.port,
            ack="true" if ack else "false",
            notify='["team@example.com"]' if ack else "[]",
            limits=HIGH_LIMITS if args.senders == "one" else "",
        )
        self.settings = parse_settings(text, str(work / "b.toml"))
        # the daemon's INFO lines, formatted and written as in production, to nowhere
        configure(self.settings.log, io.StringIO())
        logging.getLogger().handlers[0].stream = _Null()  # type: ignore[attr-defined]
        self.clock = FixedClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
        self.app = App.build(self.settings, self.clock)
        self.sink = sink
        self.mails = [mail(n, sender_of(n, args.senders)) for n in range(args.count)]

    def ingest(self) -> None:
        from mailbridge.envelope import Envelope, Source

        live = Source("smtp", "127.0.0.1:2525", live=True)
        batch = self.args.batch
        items = [
            (raw, Envelope(sender_of(n, self.args.senders), ("support@example.com",)), live)
            for n, raw in enumerate(self.mails)
        ]
        for start in range(0, len(items), batch):
            # the clock moves as live mail would arrive: 1,000 mails within the hour
            self.clock.now = self.clock.now + timedelta(milliseconds=100)
            outcomes = self.app.ingestor.accept_each(items[start : start + batch])
            assert all(o.outcome == "created" for o in outcomes), outcomes

    def deliver(self) -> int:
        from mailbridge.outbound.sender import OutboxSender, SenderConfig

        sender = OutboxSender(self.app.store, SenderConfig.from_settings(self.settings), self.clock)
        return sender.deliver_due()

    def close(self) -> None:
        self.app.close()


class _Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def reset_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def one_repeat(args: argparse.Namespace, work: Path, sink: Sink) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"off": {}, "on": {}, "deliver": {}}
    off = Round(args, work, sink, ack=False)
    with measured(out["off"], args.count):
        off.ingest()
    off.close()
    on = Round(args, work, sink, ack=True)
    with measured(out["on"], args.count):
        on.ingest()
    sink.ask("clear")
    with measured(out["deliver"], args.count):
        sent = on.deliver()
    on.close()
    arrived = sink.ask("count")
    assert arrived == sent and (args.senders == "many" or sent == 2 * args.count), (arrived, sent)
    return out


def profile(args: argparse.Namespace, work: Path, sink: Sink) -> None:
    rnd = Round(args, work, sink, ack=args.profile != "off")
    run: Callable[[], object] = rnd.ingest
    if args.profile == "deliver":
        rnd.ingest()
        run = rnd.deliver
    prof = cProfile.Profile()
    prof.runcall(run)
    rnd.close()
    path = Path(f"ack_cost.{args.profile}.prof")
    prof.dump_stats(path)
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)
    print(f"profile written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10, help="mails per group commit")
    parser.add_argument("--senders", choices=("one", "many"), default="one")
    parser.add_argument("--database-url", help="PostgreSQL (dropped and recreated per round)")
    parser.add_argument("--profile", choices=("off", "on", "deliver"))
    parser.add_argument("--root", type=Path, help="another checkout's mailbridge (before/after)")
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, str(args.root))
    sink = Sink()
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            profile(args, Path(tmp), sink)
            sink.close()
            return
        rows: list[dict[str, dict[str, float]]] = []
        for repeat in range(args.repeats):
            rows.append(one_repeat(args, Path(tmp), sink))
            print(f"repeat {repeat + 1}: " + "  ".join(_fmt(k, v) for k, v in rows[-1].items()))
        med = {
            k: {m: statistics.median(r[k][m] for r in rows) for m in ("cpu_ms", "wall_ms")}
            for k in rows[0]
        }
        print("median:   " + "  ".join(_fmt(k, v) for k, v in med.items()))
        ratio_cpu = med["off"]["cpu_ms"] / med["on"]["cpu_ms"]
        ratio_wall = med["off"]["wall_ms"] / med["on"]["wall_ms"]
        print(
            f"rate with acks+notify on / off: {ratio_cpu:.2f}x by CPU, {ratio_wall:.2f}x by wall"
            f" (ingest only; delivery is the sender's, later)"
        )
    sink.close()


def _fmt(name: str, v: dict[str, float]) -> str:
    return f"{name} {v['cpu_ms']:.2f} ms CPU / {v['wall_ms']:.2f} ms wall"


if __name__ == "__main__":
    main()
