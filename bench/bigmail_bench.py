"""Peak RSS while ingesting one large message (default 50 MB, a base64 attachment).

    python bench/bigmail_bench.py [--mb 50] [--parse-only]

Runs the ingest (or, with --parse-only, just `mailbridge.parse.parse`) in a fresh child
process so its peak RSS is the figure, not the generator's. Target: peak < 250 MB (issue 7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from mailbridge.app import App
from mailbridge.config import parse_settings
from mailbridge.envelope import Envelope, Source
raw = open(sys.argv[1], "rb").read()
app = App.build(parse_settings('[database]\nurl = "%s"\n' % sys.argv[2], "bench.toml"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if sys.argv[4] == "parse":
    from mailbridge.parse import parse
    outcome = "parsed %d attachment(s)" % len(parse(raw).attachments)
else:
    outcome = app.ingestor.accept(raw, Envelope(), Source("file", "big", live=False)).outcome
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "seconds": elapsed, "peak_rss_mb": peak / 1024, "before_mb": base / 1024}))
"""


def make_big(path: Path, megabytes: int) -> None:
    import base64

    chunk = os.urandom(57 * 1024)
    with path.open("wb") as fh:
        fh.write(
            b"From: Big Sender <big@customer.example>\r\nTo: support@example.com\r\nSubject: huge scan\r\n"
            b"Message-ID: <big@customer.example>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
            b'see attachment\r\n--b\r\nContent-Type: application/octet-stream; name="scan.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        written = 0
        while written < megabytes * 1024 * 1024:
            encoded = base64.encodebytes(chunk).replace(b"\n", b"\r\n")
            fh.write(encoded)
            written += len(encoded)
        fh.write(b"--b--\r\n")


TARGET_MB = 250


def run(megabytes: int, parse_only: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        mail = Path(tmp) / "big.eml"
        make_big(mail, megabytes)
        started = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(mail),
                f"sqlite:///{tmp}/big.db",
                str(ROOT),
                "parse" if parse_only else "ingest",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["size_mb"] = mail.stat().st_size / 1024 / 1024
        result["wall_seconds"] = time.perf_counter() - started
        result["target_peak_rss_mb"] = TARGET_MB
        result["meets_target"] = result["peak_rss_mb"] < TARGET_MB
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--parse-only", action="store_true", help="measure parse() alone")
    args = ap.parse_args()
    print(json.dumps(run(args.mb, args.parse_only)))


if __name__ == "__main__":
    main()
