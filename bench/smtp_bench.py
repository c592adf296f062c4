"""SMTP end-to-end benchmark: `mailbridge run` on SQLite, offered load from smtplib client threads.

Measures what a sending MTA sees: the time from the end of DATA (our final `.` sent) to the
`250`, which spans parse, classify, thread, store and commit. Two modes:

- fixed rate: messages are scheduled at R msg/s for D seconds over N persistent connections;
  reports the sustained rate and p50/p99 latency. If the daemon cannot keep up, sends start late
  ("start lag" grows) and the sustained rate falls below the offered one.
- max: C clients send back to back for D seconds; the daemon's ceiling.

The daemon runs as a subprocess so the clients do not share its interpreter (and GIL).

    python bench/smtp_bench.py                     # 50,100,200 msg/s for 20 s each, then max with 50 clients
    python bench/smtp_bench.py --rate 200 --duration 20 --clients 20 --max-clients 50
    python bench/smtp_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1/mb_bench
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ is not a package on the path then

from bench.servers.ports import free_port  # noqa: E402

SUPPORT = "support@example.com"
DOT_LINE = re.compile(rb"(?m)^\.")  # a line starting with a dot is sent doubled (RFC 5321 4.5.2)
BODY = (
    "Hello support,\n\nthe printer on the third floor prints only blank pages since this morning.\n"
    * 30
)

CONFIG = """
[database]
url = "{url}"

[smtp]
listen = "127.0.0.1:{port}"
addresses = ["{support}"]
max_connections_per_client = 200

[agents]
addresses = ["alice@example.com"]
notify = ["team@example.com"]

[tickets]
max_new_per_sender_per_hour = 1000000

[log]
level = "warning"
"""


class Daemon:
    """`mailbridge run` with a temp config; ready when it sends READY=1 to our notify socket."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.port = free_port()
        config = workdir / "mailbridge.toml"
        config.write_text(CONFIG.format(url=url, port=self.port, support=SUPPORT))
        notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(REPO)}
        self.log = (workdir / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailbridge", "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        while b"READY=1" not in self.notify.recv(4096):
            pass

    def cpu_seconds(self) -> float:
        """User+system CPU the daemon has used: a per-message cost that a busy host does not skew."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        self.notify.close()
        return code


def make_message(n: int, reply_to: str | None) -> tuple[bytes, str]:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@customer.example>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Re: Printer problem {n - 1}" if reply_to else f"Printer problem {n}"
    msg["Message-ID"] = mid = make_msgid(domain="customer.example")
    if reply_to:
        msg["In-Reply-To"] = reply_to
    msg.set_content(BODY)
    return msg.as_bytes().replace(b"\n", b"\r\n"), mid


class Messages:
    """Thread-safe supply of distinct messages; every fourth replies to the one before it."""

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.lock = threading.Lock()
        self.last_id: str | None = None

    def next(self) -> tuple[int, bytes]:
        with self.lock:
            n = next(self.counter)
            raw, self.last_id = make_message(n, self.last_id if n % 4 == 3 else None)
            return n, raw


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: int = 0
    first: float = float("inf")
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, latency: float, lag: float, ok: bool) -> None:
        with self.lock:
            self.first = min(self.first, started)
            self.last = max(self.last, time.perf_counter())
            if ok:
                self.latencies.append(latency)
                self.lags.append(lag)
            else:
                self.errors += 1


def send_one(smtp: smtplib.SMTP, raw: bytes) -> tuple[float, bool]:
    """One transaction; returns (seconds from end of DATA to the reply, got 250)."""
    smtp.mail("bench@customer.example")
    smtp.rcpt(SUPPORT)
    smtp.putcmd("data")
    code, _ = smtp.getreply()
    if code != 354:
        return 0.0, False
    smtp.send(DOT_LINE.sub(b"..", raw) + b".\r\n")
    ended = time.perf_counter()
    code, _ = smtp.getreply()
    return time.perf_counter() - ended, code == 250


def connect(port: int) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
    smtp.ehlo("bench.example")
    return smtp


def run_clients(worker: Callable[[], None], clients: int) -> None:
    """`clients` threads, each one connection running `worker` until it returns."""
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_fixed_rate(
    port: int, rate: float, duration: float, clients: int, messages: Messages
) -> Result:
    result = Result()
    total = int(rate * duration)
    slots = itertools.count()
    slots_lock = threading.Lock()
    t0 = time.perf_counter() + 0.5

    def worker() -> None:
        smtp = connect(port)
        try:
            while True:
                with slots_lock:
                    k = next(slots)
                if k >= total:
                    return
                due = t0 + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                started = time.perf_counter()
                _, raw = messages.next()
                latency, ok = send_one(smtp, raw)
                result.record(due, latency, started - due, ok)
        finally:
            smtp.close()

    run_clients(worker, clients)
    return result


def run_max(port: int, duration: float, clients: int, messages: Messages) -> Result:
    result = Result()
    stop_at = time.perf_counter() + duration

    def worker() -> None:
        smtp = connect(port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                _, raw = messages.next()
                latency, ok = send_one(smtp, raw)
                result.record(started, latency, 0.0, ok)
        finally:
            smtp.close()

    run_clients(worker, clients)
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def row(label: str, offered: str, clients: int, r: Result, cpu: float) -> str:
    span = max(r.last - r.first, 1e-9)
    done = len(r.latencies)
    lag = pct(r.lags, 99) * 1000 if r.lags and any(r.lags) else 0.0
    return (
        f"{label:<6} {offered:>9} {clients:>7} {done:>6} {r.errors:>6} {done / span:>7.1f} "
        f"{pct(r.latencies, 50) * 1000:>7.1f} {pct(r.latencies, 99) * 1000:>7.1f} "
        f"{lag:>10.0f} {cpu / max(done, 1) * 1000:>9.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="50,100,200", help="offered msg/s, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--clients", type=int, default=20, help="connections for fixed-rate runs")
    parser.add_argument(
        "--max-clients", type=int, default=50, help="connections for the max run (0: skip)"
    )
    parser.add_argument("--database-url", help="default: SQLite in a temp directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mb-bench-") as tmp:
        workdir = Path(tmp)
        url = args.database_url or f"sqlite:///{workdir}/mailbridge.db"
        daemon = Daemon(workdir, url)
        messages = Messages()
        lines = [
            f"mailbridge SMTP bench: {url.split(':', 1)[0]}, {args.duration:.0f} s per run, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            f"{'mode':<6} {'offered/s':>9} {'clients':>7} {'ok':>6} {'errors':>6} {'msg/s':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'p99 lag ms':>10} {'CPU ms/msg':>9}",
        ]
        print(lines[0], file=sys.stderr)
        try:
            for rate in (float(r) for r in args.rate.split(",") if r.strip() and float(r) > 0):
                cpu = daemon.cpu_seconds()
                r = run_fixed_rate(daemon.port, rate, args.duration, args.clients, messages)
                cpu = daemon.cpu_seconds() - cpu
                lines.append(row("fixed", f"{rate:.0f}", args.clients, r, cpu))
                print(lines[-1], file=sys.stderr)
            if args.max_clients:
                cpu = daemon.cpu_seconds()
                r = run_max(daemon.port, args.duration, args.max_clients, messages)
                cpu = daemon.cpu_seconds() - cpu
                lines.append(row("max", "-", args.max_clients, r, cpu))
        finally:
            code = daemon.stop()
        print("\n".join(lines))
        print(
            f"(daemon exit code {code}; latency: end of DATA to 250; lag: how late sends started "
            f"against the schedule; CPU: the daemon's user+system time per stored message; "
            f"load average at the end {os.getloadavg()[0]:.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
