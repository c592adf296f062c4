"""SPEC 4: a message acknowledged with 250 (or flagged on IMAP) survives a power loss, because the
commit that holds it reached the disk first. On SQLite that is WAL with synchronous=FULL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from mailbridge.app import App
from tests.env import IN_CI


def test_live_sqlite_connection_runs_wal_with_full_sync(sqlite_app: App) -> None:
    with sqlite_app.store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        # 2 = FULL: the WAL is fsynced at every commit, not only at checkpoints
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2


_COMMIT_ONE = textwrap.dedent(
    """
    import os, sys
    from mailbridge.app import App
    from mailbridge.config import parse_settings
    from mailbridge.envelope import Envelope, Source

    settings = parse_settings(
        '[database]\\nurl = "sqlite:///%s"\\n[smtp]\\naddresses = ["support@example.com"]\\n',
        "inline.toml",
    )
    app = App.build(settings)
    raw = b"From: c@customer.example\\r\\nTo: support@example.com\\r\\nSubject: hi\\r\\n"
    raw += b"Message-ID: <durable@customer.example>\\r\\n\\r\\nbody\\r\\n"
    os.access("/mailbridge-commit-begins", os.F_OK)
    out = app.ingestor.accept(raw, Envelope(), Source("smtp", "test", live=True))
    os.access("/mailbridge-commit-returned", os.F_OK)
    sys.stdout.write(out.outcome)
    sys.stdout.flush()
    # no orderly close: a checkpoint at close would fsync too and hide a missing commit sync
    os._exit(0)
    """
)


def test_commit_of_an_accepted_message_is_fsynced_before_ingest_returns(tmp_path: Path) -> None:
    if not shutil.which("strace"):
        reason = "strace is not installed (Debian package strace)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    db = tmp_path / "mb.db"
    # migrate first, so the traced window holds only the message's own transaction
    warm = _COMMIT_ONE.replace("durable@", "warmup@") % db
    subprocess.run([sys.executable, "-c", warm], check=True, capture_output=True)
    trace = tmp_path / "trace.txt"
    done = subprocess.run(
        [
            "strace", "-f", "-o", str(trace),
            "-e", "trace=fsync,fdatasync,access,faccessat,faccessat2",
            sys.executable, "-c", _COMMIT_ONE % db,
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert done.stdout == "created"
    lines = trace.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "mailbridge-commit-begins" in line)
    end = next(i for i, line in enumerate(lines) if "mailbridge-commit-returned" in line)
    syncs = [line for line in lines[begin:end] if "fsync(" in line or "fdatasync(" in line]
    assert syncs, "no fsync/fdatasync between the start of the commit and its return"
