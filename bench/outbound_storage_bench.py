"""Database bytes per inbound mail, with its acknowledgement and notification sent (issue 14).

    python bench/outbound_storage_bench.py [--count 20] [--kb 100] [--root DIR]

Ingests `count` mails of about `kb` KB each, live (so they are acknowledged and agents
notified), delivers the outbox to an aiosmtpd sink, and prints the SQLite file's growth per mail
(after a WAL checkpoint and VACUUM) and the stored payload per mail by table, for a mail that is
mostly attachment and one that is mostly text. `--root` runs another checkout's `mailbridge`
(e.g. an older commit, for a before/after figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[database]
url = "sqlite:///{db}"
[smtp]
addresses = ["support@example.com"]
[agents]
notify = ["team@example.com"]
[tickets]
acknowledge = true
[outbound]
smarthost = "127.0.0.1"
port = {port}
from_address = "support@example.com"
"""


def mail(n: int, kb: int, kind: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@customer{n}.example>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Problem {n}"
    msg["Message-ID"] = f"<bench-{kind}-{n}@customer.example>"
    msg["Date"] = "Mon, 02 Nov 2026 08:00:00 +0000"
    if kind == "attachment":
        msg.set_content("Please see the attached file.\n")
        # base64 grows by a third: this many bytes make about `kb` KB of mail
        data = os.urandom(kb * 1024 * 3 // 4 - 2048)
        msg.add_attachment(data, maintype="application", subtype="pdf", filename="scan.pdf")
    else:
        line = "The quick brown fox jumps over the lazy dog, again and again. %d\n"
        text = "".join(line % i for i in range(kb * 1024 // 64))
        msg.set_content(text[: kb * 1024 - 600])
    return msg.as_bytes()


def file_size(db: Path) -> int:
    """The live data: free pages (the outbox's bytes after delivery) are reused by SQLite, so
    VACUUM them away; in WAL mode VACUUM lands in the WAL, hence the checkpoint after it."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db.stat().st_size


def payload(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        one = conn.execute(
            "SELECT coalesce(sum(length(raw)),0), coalesce(sum(length(body_text)),0) FROM messages"
        ).fetchone()
        out = conn.execute(
            "SELECT coalesce(sum(length(raw)),0), coalesce(sum(length(spec)),0) FROM outbox"
        ).fetchone()
    return {"messages.raw": one[0], "messages.body_text": one[1], "outbox": out[0] + out[1]}


def run(kind: str, count: int, kb: int, work: Path) -> dict[str, object]:
    from bench.servers.smtp_sink import SmtpSink
    from mailbridge.app import App
    from mailbridge.clock import FixedClock
    from mailbridge.config import parse_settings
    from mailbridge.envelope import Envelope, Source
    from mailbridge.outbound.sender import OutboxSender, SenderConfig

    db = work / f"{kind}.db"
    clock = FixedClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    mails = [mail(n, kb, kind) for n in range(count)]
    with SmtpSink.running() as sink:
        settings = parse_settings(CONFIG.format(db=db, port=sink.port), str(work / "b.toml"))
        app = App.build(settings, clock)
        app.close()
        before = file_size(db)
        app = App.build(settings, clock)
        live = Source("smtp", "127.0.0.1:2525", live=True)
        for n, raw in enumerate(mails):
            sender = f"c{n}@customer{n}.example"
            app.ingestor.accept(raw, Envelope(sender, ("support@example.com",)), live)
        OutboxSender(app.store, SenderConfig.from_settings(settings), clock).deliver_due()
        delivered = len(sink.received)
        app.close()
    after = file_size(db)
    size = sum(len(m) for m in mails) / count
    stored = {k: round(v / count) for k, v in payload(db).items()}
    return {
        "kind": kind,
        "mail_bytes": round(size),
        "delivered": delivered,
        "db_growth_per_mail": round((after - before) / count),
        "ratio": round((after - before) / count / size, 2),
        "stored_per_mail": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--kb", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    sys.path.insert(1, str(ROOT))  # bench.servers, the sink
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("attachment", "text"):
            print(json.dumps(run(kind, args.count, args.kb, Path(tmp))))


if __name__ == "__main__":
    main()
