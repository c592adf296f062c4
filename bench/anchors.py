"""mailbridge's listener beside real anchors, driven by Postfix's C load generator, in one run.

    python bench/anchors.py [--messages 2000] [--sessions 50] [--size 2048] [--repeats 3]
                            [--before REV] [--offline [--helpdesk-python PATH]]

Starts, side by side: a private Dovecot LMTP server delivering into a Maildir, a private Postfix
smtpd whose transport discards (so its figure is smtpd + cleanup + queue file with fsync), and
`mailbridge run` on SQLite (SMTP and LMTP) and on PostgreSQL with [smtp] workers = 1 and 2.
`smtp-source` (C, from Debian's postfix) sends to each in turn, the rounds interleaved so a noisy
neighbour hits every row alike; each figure is the median of `--repeats` rounds, printed with
its ratio to its anchor. Needs root (Postfix and Dovecot drop to their own users), PostgreSQL
at MAILBRIDGE_BENCH_DATABASE_URL for the PostgreSQL rows (missing: said so, not faked).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ is not a package on the path then

from bench.servers.ports import free_port  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
PG_ADMIN = os.environ.get(
    "MAILBRIDGE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"
)


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


# --- the anchors ----------------------------------------------------------------------------


class Dovecot:
    def __init__(self, root: Path) -> None:
        self.root = root / "dovecot"
        self.root.mkdir(mode=0o755)
        self.port = free_port()
        (self.root / "mail").mkdir(mode=0o755)
        users = self.root / "users"
        users.write_text(
            f"support@example.com:{{PLAIN}}x:65534:65534::{self.root}/mail/support::\n"
        )
        os.chown(self.root / "mail", 65534, 65534)
        self.conf = self.root / "dovecot.conf"
        self.conf.write_text(
            f"""base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = mbbench{self.port}
log_path = {self.root}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 100
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
"""
        )
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)])
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _master_cf(port: int) -> str:
    lines = Path("/usr/share/postfix/master.cf.dist").read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and fields[0] == "smtp" and fields[1] == "inet":
            line = f"127.0.0.1:{port}" + line[len("smtp") :]
        elif len(fields) > 1 and fields[1] == "inet" and not line.startswith("#"):
            line = "#" + line  # no port of the host's own Postfix is taken
        out.append(line)
    return "\n".join(out) + "\n"


class Postfix:
    def __init__(self, root: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mb-bench-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        etc, spool, lib = self.root / "etc", self.root / "spool", self.root / "lib"
        for directory in (etc, spool, lib):
            directory.mkdir()
        shutil.chown(lib, "postfix", "postfix")
        (etc / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {lib}
myhostname = mx.bench.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
relay_domains = example.com
transport_maps = hash:{etc}/transport
maillog_file = {self.root}/postfix.log
maillog_file_prefixes = {self.root}
smtpd_peername_lookup = no
default_process_limit = 200
"""
        )
        (etc / "master.cf").write_text(_master_cf(self.port))
        (etc / "transport").write_text("example.com discard:\n")
        subprocess.run(["postmap", f"hash:{etc}/transport"], check=True)
        self.etc = etc
        subprocess.run(["postfix", "-c", str(etc), "start"], check=True, capture_output=True)
        wait_port(self.port)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


# --- mailbridge -------------------------------------------------------------------------------

CONFIG = """
[database]
url = "{url}"

[smtp]
listen = "127.0.0.1:{port}"
mode = "{mode}"
addresses = ["support@example.com"]
max_connections_per_client = 500
{workers}

[agents]
addresses = ["alice@example.com"]
notify = {notify}

[tickets]
max_new_per_sender_per_hour = 10000000
acknowledge = {ack}
ack_max_per_sender_per_hour = 10000000
ack_max_per_domain_per_hour = 10000000
ack_max_per_hour = 10000000

[outbound]
from_address = "support@example.com"

[log]
level = "info"
"""


class Mailbridge:
    def __init__(
        self,
        root: Path,
        url: str,
        mode: str = "smtp",
        workers: int = 1,
        ack: bool = False,
        source: Path = REPO,
    ) -> None:
        self.port = free_port()
        self.dir = root / f"mb-{self.port}"
        self.dir.mkdir()
        config = self.dir / "mailbridge.toml"
        ack_text = "true" if ack else "false"
        config.write_text(
            CONFIG.format(
                url=url,
                port=self.port,
                mode=mode,
                # the key is left out at 1, so a tree from before it existed (--before) reads this
                workers=f"workers = {workers}" if workers > 1 else "",
                ack=ack_text,
                # no smarthost: acknowledgements and notifications are queued in the outbox (the
                # cost at intake), not sent
                notify='["team@example.com"]' if ack else "[]",
            )
        )
        self.log = (self.dir / "daemon.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailbridge", "--config", str(config), "run"],
            cwd=self.dir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError((self.dir / "daemon.log").read_text()[-2000:]) from None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)
        self.log.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (the [smtp] workers), from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(cpu_seconds(int(child)) for child in children)


def pg_database() -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(PG_ADMIN).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"mb_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = admin_url.set(database=name).render_as_string(hide_password=False)
    return url.replace("postgresql+psycopg://", "postgresql://", 1), drop


# --- driving ----------------------------------------------------------------------------------


def smtp_source(
    port: int, lmtp: bool, persistent: bool, messages: int, sessions: int, size: int, sender: str
) -> float:
    """msg/s smtp-source achieved (it exits once every message is answered)."""
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += ["-f", sender, "-t", "support@example.com"]
    argv += (["-L"] if lmtp else []) + (["-d"] if persistent else [])
    started = time.perf_counter()
    subprocess.run([*argv, f"127.0.0.1:{port}"], check=True, capture_output=True, timeout=600)
    return messages / (time.perf_counter() - started)


def latency(port: int, rate: float, seconds: float) -> float:
    """p99 seconds from the end of DATA to the reply, at a fixed offered rate."""
    from bench import smtp_bench

    result = smtp_bench.run_fixed_rate(port, rate, seconds, 20, smtp_bench.Messages())
    return smtp_bench.pct(result.latencies, 99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--before", metavar="REV", help="also run mailbridge at git REV (rows marked 'before')"
    )
    parser.add_argument(
        "--offline", action="store_true", help="then run bench/floor.py (offline ingest rows)"
    )
    parser.add_argument("--helpdesk-python", help="passed on to bench/floor.py")
    parser.add_argument("--latency-rate", type=float, default=200.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    root.chmod(0o755)
    servers: dict[str, object] = {}
    drops: list[Callable[[], None]] = []
    notes: list[str] = []
    # (name, server key, lmtp, persistent connections)
    rounds: list[tuple[str, str, bool, bool]] = []
    try:
        servers["dovecot"] = Dovecot(root)
        servers["postfix"] = Postfix(root)
        servers["mb-lmtp"] = Mailbridge(root, f"sqlite:///{root}/lmtp.db", mode="lmtp")
        servers["mb-smtp"] = Mailbridge(root, f"sqlite:///{root}/smtp.db")
        servers["mb-smtp-ack"] = Mailbridge(root, f"sqlite:///{root}/ack.db", ack=True)
        rounds += [
            ("Dovecot LMTP", "dovecot", True, True),
            ("mailbridge LMTP, SQLite", "mb-lmtp", True, True),
            ("Postfix smtpd", "postfix", False, True),
            ("mailbridge SMTP, SQLite", "mb-smtp", False, True),
            ("mailbridge SMTP, SQLite, ack+notify", "mb-smtp-ack", False, True),
            ("Postfix smtpd, per-message conn.", "postfix", False, False),
            ("mailbridge SMTP, SQLite, per-message conn.", "mb-smtp", False, False),
        ]
        if args.before:
            before = root / "before"
            before.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.before], check=True, capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
            servers["before-smtp"] = Mailbridge(root, f"sqlite:///{root}/before.db", source=before)
            rounds.append(("mailbridge SMTP, SQLite (before)", "before-smtp", False, True))
        try:
            for workers in (1, 2):
                url, drop = pg_database()
                drops.append(drop)
                servers[f"mb-pg{workers}"] = Mailbridge(root, url, workers=workers)
                rounds.append(
                    (
                        f"mailbridge SMTP, PostgreSQL, {workers} worker(s)",
                        f"mb-pg{workers}",
                        False,
                        True,
                    )
                )
            if args.before:
                url, drop = pg_database()
                drops.append(drop)
                servers["before-pg"] = Mailbridge(root, url, source=root / "before")
                rounds.append(("mailbridge SMTP, PostgreSQL (before)", "before-pg", False, True))
        except Exception as exc:  # no server: say so
            notes.append(f"PostgreSQL rows not measured: {exc}")

        rates: dict[str, list[float]] = {name: [] for name, *_ in rounds}
        cpu_ms: dict[str, list[float]] = {name: [] for name, *_ in rounds}
        latency_rows = [("Postfix smtpd", "postfix"), ("mailbridge SMTP, SQLite", "mb-smtp")]
        if args.before:
            latency_rows.append(("mailbridge SMTP, SQLite (before)", "before-smtp"))
        p99s: dict[str, list[float]] = {name: [] for name, _ in latency_rows}
        for repeat in range(args.repeats):
            for row, (name, key, lmtp, persistent) in enumerate(rounds):
                # smtp-source sends every mail from one address; the per-sender and per-domain
                # hourly counts (flood guard, acknowledgement limits) grow with that sender's
                # mail, so each round gets a sender and domain of its own: rounds start alike
                sender = f"customer@r{repeat}-{row}.client.test"
                server = servers[key]
                pid = server.proc.pid if isinstance(server, Mailbridge) else None
                cpu_before = cpu_seconds(pid) if pid else 0.0
                port = server.port  # type: ignore[attr-defined]
                rate = smtp_source(
                    port, lmtp, persistent, args.messages, args.sessions, args.size, sender
                )
                rates[name].append(rate)
                if pid:
                    # CPU per message hardly depends on what else runs: the figure to compare
                    # before/after on a noisy machine
                    cpu_ms[name].append((cpu_seconds(pid) - cpu_before) * 1000 / args.messages)
                print(f"  round {repeat + 1}: {name}: {rate:.0f} msg/s", flush=True)
            for name, key in latency_rows:
                port = servers[key].port  # type: ignore[attr-defined]
                p99 = latency(port, args.latency_rate, args.latency_seconds)
                p99s[name].append(p99)
                print(f"  round {repeat + 1}: {name}: p99 {p99 * 1000:.1f} ms", flush=True)
    finally:
        for server in servers.values():
            try:
                server.stop()  # type: ignore[attr-defined]
            except Exception as exc:
                notes.append(f"stopping {server}: {exc}")
        for drop in drops:
            drop()
        shutil.rmtree(root, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in rates.items() if values}
    anchors = {
        "mailbridge LMTP, SQLite": ("Dovecot LMTP", 1.0),
        "mailbridge SMTP, SQLite": ("Dovecot LMTP", 1.0),
        "mailbridge SMTP, SQLite, ack+notify": ("mailbridge SMTP, SQLite", 0.7),
        "mailbridge SMTP, SQLite, per-message conn.": ("Postfix smtpd, per-message conn.", None),
        "mailbridge SMTP, PostgreSQL, 1 worker(s)": ("Postfix smtpd", None),
        "mailbridge SMTP, PostgreSQL, 2 worker(s)": ("Postfix smtpd", 0.8),
        "mailbridge SMTP, SQLite (before)": ("Dovecot LMTP", None),
        "mailbridge SMTP, PostgreSQL (before)": ("Postfix smtpd", None),
    }
    print()
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}; {args.messages} messages of {args.size} B per round, "
        f"{args.sessions} sessions, median of {args.repeats} interleaved rounds"
    )
    print("| row | msg/s (median) | rounds | anchor | ratio | target | CPU ms/msg |")
    print("|---|---|---|---|---|---|---|")
    for name, values in rates.items():
        rounds_text = " / ".join(f"{v:.0f}" for v in values)
        cpu = f"{statistics.median(cpu_ms[name]):.2f}" if cpu_ms.get(name) else ""
        anchor, target = anchors.get(name, (None, None))
        if anchor and anchor in med:
            ratio = med[name] / med[anchor]
            verdict = (
                ""
                if target is None
                else (f"≥ {target}× " + ("met" if ratio >= target else "NOT met"))
            )
            print(
                f"| {name} | {med[name]:.0f} | {rounds_text} | {anchor} | {ratio:.2f}× | {verdict} | {cpu} |"
            )
        else:
            print(f"| {name} | {med[name]:.0f} | {rounds_text} | (anchor) | | | {cpu} |")
    print()
    print(
        f"end of DATA -> 250 at {args.latency_rate:.0f} msg/s offered for "
        f"{args.latency_seconds:.0f} s over 20 persistent connections (smtplib clients):"
    )
    print("| server | p99 ms (median) | rounds | target |")
    print("|---|---|---|---|")
    for name, values in p99s.items():
        if not values:
            continue
        p99 = statistics.median(values) * 1000
        verdict = (
            "" if name.startswith("Postfix") else ("< 50 ms " + ("met" if p99 < 50 else "NOT met"))
        )
        rounds_text = " / ".join(f"{v * 1000:.1f}" for v in values)
        print(f"| {name} | {p99:.1f} | {rounds_text} | {verdict} |")
    for note in notes:
        print(f"note: {note}")
    if args.offline:
        print(flush=True)
        extra = ["--helpdesk-python", args.helpdesk_python] if args.helpdesk_python else []
        subprocess.run([sys.executable, str(REPO / "bench" / "floor.py"), *extra], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
