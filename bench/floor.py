"""Offline ingest beside its floor: what the stdlib alone does with the same mails, one process.

    python bench/floor.py [--count 2000] [--repeats 3] [--helpdesk-python PATH]

The floor is what any importer must at least do: parse with the stdlib's compat32 parser, walk
the parts for the text, and insert subject, sender, Message-ID, body and the raw bytes into SQLite
in batches of 200 (synchronous=FULL, as mailbridge commits). mailbridge does this and more
(threading, dedup, classification, events, attachments): its rate is the same mails through
`Ingestor.accept_many`, the loop `mailbridge ingest` runs. Two mixes: bench/mixgen.py's support
mix, and small mails (bench/smtp_bench.py's). Rounds interleave; figures are medians.

`--helpdesk-python` names a Python with django-helpdesk installed (a side venv): its `get_email`
(helpdesk.email.extract_email_metadata, what it calls per mail) reads the same mix into its own SQLite database.
"""

from __future__ import annotations

import argparse
import email
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from email import policy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.mixgen import generate  # noqa: E402
from bench.smtp_bench import make_message  # noqa: E402

BATCH = 200


def _text(message: email.message.Message) -> str:
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def floor(mails: list[bytes], path: Path) -> float:
    """Seconds for the stdlib floor over `mails`."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE mail (id INTEGER PRIMARY KEY, message_id TEXT, sender TEXT,"
        " subject TEXT, body TEXT, raw BLOB)"
    )
    started = time.perf_counter()
    for start in range(0, len(mails), BATCH):
        rows = []
        for raw in mails[start : start + BATCH]:
            message = email.message_from_bytes(raw, policy=policy.compat32)
            subject = str(message.get("Subject", ""))
            rows.append(
                (message.get("Message-ID"), message.get("From"), subject, _text(message), raw)
            )
        with db:
            db.executemany(
                "INSERT INTO mail (message_id, sender, subject, body, raw) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def mailbridge(mails: list[bytes], path: Path) -> float:
    """Seconds for mailbridge's ingest loop over `mails` (database opened and migrated first)."""
    from mailbridge.app import App
    from mailbridge.config import parse_settings
    from mailbridge.envelope import Envelope, Source

    text = (
        f'[database]\nurl = "sqlite:///{path}"\nbatch_size = {BATCH}\n'
        '[smtp]\naddresses = ["support@example.com"]\n'
        "[tickets]\nmax_new_per_sender_per_hour = 1000000\n"
    )
    app = App.build(parse_settings(text, "bench.toml"))
    source, envelope = Source("file", "bench", live=False), Envelope()
    started = time.perf_counter()
    for start in range(0, len(mails), BATCH):
        app.ingestor.accept_many([(raw, envelope, source) for raw in mails[start : start + BATCH]])
    elapsed = time.perf_counter() - started
    app.close()
    return elapsed


HELPDESK = r"""
import os, sys, tempfile, time
from pathlib import Path
tmp = tempfile.mkdtemp()
os.environ["DJANGO_SETTINGS_MODULE"] = "hdbench_settings"
Path(tmp, "hdbench_settings.py").write_text(f'''
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.sites", "django.contrib.humanize",
    "django.contrib.messages", "rest_framework", "helpdesk"]
HELPDESK_TEAMS_MODEL = "auth.Group"
HELPDESK_TEAMS_MIGRATION_DEPENDENCIES = [("auth", "0012_alter_user_first_name_max_length")]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "{tmp}/hd.db"}}}}
SITE_ID = 1
USE_TZ = True
MEDIA_ROOT = "{tmp}/media"
HELPDESK_ENABLE_ATTACHMENTS = True
LOGGING_CONFIG = None
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
    "OPTIONS": {{"context_processors": []}}}}]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
''')
sys.path.insert(0, tmp)
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
import logging
from helpdesk.models import Queue
from helpdesk.email import extract_email_metadata
queue = Queue.objects.create(title="Support", slug="support", email_address="support@example.com")
files = sorted(Path(sys.argv[1]).iterdir())
log = logging.getLogger("bench")
started = time.perf_counter()
for f in files:
    extract_email_metadata(f.read_text(errors="replace"), queue, log)
print(len(files) / (time.perf_counter() - started))
"""


def helpdesk(python: str, mails: list[bytes], directory: Path) -> float:
    """msg/s of django-helpdesk's get_email path over the same mails (one fresh database)."""
    spool = directory / "spool"
    spool.mkdir(exist_ok=True)
    for n, raw in enumerate(mails):
        (spool / f"{n:06d}.eml").write_bytes(raw)
    done = subprocess.run(
        [python, "-c", HELPDESK, str(spool)], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--helpdesk-python")
    args = parser.parse_args()
    mixes = {
        "2,000-mail mix" if args.count == 2000 else f"{args.count}-mail mix": list(
            generate(args.count)
        ),
        "small mails": [make_message(n, None)[0] for n in range(args.count)],
    }
    rates: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for mix, mails in mixes.items():
            for name, fn in (("stdlib floor", floor), ("mailbridge ingest", mailbridge)):
                with tempfile.TemporaryDirectory() as tmp:
                    rate = len(mails) / fn(mails, Path(tmp) / "bench.db")
                rates.setdefault((mix, name), []).append(rate)
                print(f"  round {repeat + 1}: {mix}: {name}: {rate:.0f} msg/s", flush=True)
    mix_name = next(iter(mixes))
    if args.helpdesk_python:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rate = helpdesk(args.helpdesk_python, mixes[mix_name], Path(tmp))
                rates[(mix_name, "django-helpdesk get_email")] = [rate]
                print(f"  {mix_name}: django-helpdesk: {rate:.0f} msg/s", flush=True)
            except Exception as exc:
                print(f"note: django-helpdesk row not measured: {exc}")
    med = {key: statistics.median(values) for key, values in rates.items()}
    print()
    print(f"median of {args.repeats} interleaved rounds (django-helpdesk: one round)")
    print("| mix | mailbridge msg/s | anchor | anchor msg/s | ratio | target |")
    print("|---|---|---|---|---|---|")
    targets = {
        (mix_name, "stdlib floor"): 0.8,
        ("small mails", "stdlib floor"): 0.4,
        (mix_name, "django-helpdesk get_email"): 20.0,
    }
    for (mix, anchor), target in targets.items():
        if (mix, anchor) not in med:
            continue
        ours, theirs = med[(mix, "mailbridge ingest")], med[(mix, anchor)]
        ratio = ours / theirs
        verdict = f"≥ {target}× " + ("met" if ratio >= target else "NOT met")
        print(f"| {mix} | {ours:.0f} | {anchor} | {theirs:.0f} | {ratio:.2f}× | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
