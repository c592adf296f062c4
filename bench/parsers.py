"""Compare mail parsers on the corpus: speed, robustness, agreement with Zammad.

    python bench/parsers.py [--corpus DIR] [--rounds 3]

Parsers: mailbridge.parse.parse (and its headers-only path), mail-parser
(`mailparser.parse_from_bytes`), the standard library's modern API
(`BytesParser(policy=policy.default)` + header access + get_body / iter_attachments),
fast-mail-parser (`fast_mail_parser.parse_email`, Rust) and the hybrid of bench/fmp_hybrid.py
(our header decoding, fast-mail-parser's body and attachments, stdlib fallback). The
fast-mail-parser rows are skipped, with a message, when it is not installed.
Each parser does the work mailbridge needs from it: sender, recipients, subject, date,
ids, a text body and the attachment list with sizes. Speed is the total time over every
`*.eml` in the corpus (read into memory first), best of N rounds, on one core.
Agreement uses the rules of tests/unit/test_zammad_agreement.py.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMALL = 64 * 1024
sys.path.insert(0, str(REPO))

import mailparser  # noqa: E402

from bench.fmp_hybrid import FMP_VERSION, extract_hybrid, fmp, run_hybrid  # noqa: E402
from bench.zammad_agreement import (  # noqa: E402
    FIELDS,
    Extract,
    corpus_dir,
    extract_mailbridge,
    measure,
)
from mailbridge.errors import ParseError  # noqa: E402
from mailbridge.parse import parse, parse_headers_only  # noqa: E402

# ------------------------------------------------------------------- the parsers' full work


def run_mailbridge(raw: bytes) -> Any:
    try:
        return parse(raw)
    except ParseError:  # "not a mail": a verdict, not a crash
        return None


def run_mailbridge_headers(raw: bytes) -> Any:
    try:
        return parse_headers_only(raw)
    except ParseError:
        return None


def run_mailparser(raw: bytes) -> Any:
    mail = mailparser.parse_from_bytes(raw)
    return (
        mail.from_,
        mail.to,
        mail.subject,
        mail.date,
        mail.message_id,
        mail.body,
        mail.attachments,
    )


def run_stdlib(raw: bytes) -> Any:
    msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[assignment]
    fields = {}
    for name in ("from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references"):
        header = msg[name]
        fields[name] = str(header) if header is not None else None
    if msg["from"] is not None:
        fields["from_addresses"] = msg["from"].addresses
    if msg["date"] is not None:
        fields["datetime"] = msg["date"].datetime
    body = msg.get_body(("plain", "html"))
    text = body.get_content() if body is not None else ""
    attachments = [
        (part.get_filename(), part.get_content_type(), len(part.get_payload(decode=True) or b""))
        for part in msg.iter_attachments()
    ]
    return fields, text, attachments


def run_fast_mail_parser(raw: bytes) -> Any:
    mail = fmp.parse_email(raw)  # type: ignore[union-attr]
    return (
        mail.from_,
        mail.to,
        mail.subject,
        mail.date_parsed,
        mail.headers.get("Message-ID"),
        mail.text_plain or mail.text_html,
        [(a.filename, a.mimetype, len(a.content)) for a in mail.attachments],
    )


# ------------------------------------------------------------------- agreement extractors


def extract_mailparser(raw: bytes) -> Extract:
    mail = mailparser.parse_from_bytes(raw)
    name, addr = mail.from_[0] if mail.from_ else (None, None)
    return Extract(addr, name, mail.subject, [a.get("filename") or "" for a in mail.attachments])


def extract_stdlib(raw: bytes) -> Extract:
    msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[assignment]
    header = msg["from"]
    first = header.addresses[0] if header is not None and header.addresses else None
    return Extract(
        first.addr_spec if first else None,
        first.display_name if first else None,
        str(msg["subject"]) if msg["subject"] is not None else None,
        [part.get_filename() or "" for part in msg.iter_attachments()],
    )


def extract_fast_mail_parser(raw: bytes) -> Extract:
    mail = fmp.parse_email(raw)  # type: ignore[union-attr]
    sender = mail.from_
    return Extract(
        sender.address if sender else None,
        sender.display_name if sender else None,
        mail.subject,
        [a.filename or "" for a in mail.attachments],
    )


Parser = tuple[str, Callable[[bytes], Any], Callable[[bytes], Extract] | None]
PARSERS: list[Parser] = [
    ("mailbridge.parse", run_mailbridge, extract_mailbridge),
    ("mailbridge.parse_headers_only", run_mailbridge_headers, None),
    ("mail-parser 4.8", run_mailparser, extract_mailparser),
    ("stdlib policy.default", run_stdlib, extract_stdlib),
]
FAST_MAIL_PARSER: list[Parser] = [
    (f"fast-mail-parser {FMP_VERSION}", run_fast_mail_parser, extract_fast_mail_parser),
    ("hybrid: our headers + fmp body/attachments", run_hybrid, extract_hybrid),
]
if fmp is not None:
    PARSERS += FAST_MAIL_PARSER

# ------------------------------------------------------------------- measuring


def timed_round(
    run: Callable[[bytes], Any], corpus: list[tuple[Path, bytes]]
) -> tuple[float, list[float], list[str]]:
    """Total seconds, seconds per message, and the exceptions raised."""
    failures, each = [], []
    gc.collect()
    clock = time.perf_counter
    start = clock()
    for path, raw in corpus:
        before = clock()
        try:
            run(raw)
        except Exception as exc:
            failures.append(f"{path.parent.name}/{path.name}: {type(exc).__name__}: {exc}"[:160])
        each.append(clock() - before)
    return clock() - start, each, failures


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--corpus", type=Path, default=corpus_dir())
    options.add_argument("--rounds", type=int, default=3)
    args = options.parse_args()
    logging.disable(logging.CRITICAL)  # mail-parser logs every defect it meets

    files = sorted(args.corpus.rglob("*.eml"))
    corpus = [(path, path.read_bytes()) for path in files]
    megabytes = sum(len(raw) for _, raw in corpus) / 1e6
    print(f"corpus: {len(corpus)} messages, {megabytes:.2f} MB, best of {args.rounds} rounds\n")
    small = [i for i, (_, raw) in enumerate(corpus) if len(raw) <= SMALL]
    print(f"typical mail: the {len(small)} messages of at most {SMALL // 1024} KB\n")
    print(
        f"| parser | total s | msgs/s | MB/s | msgs/s <= {SMALL // 1024} KB | median ms | p99 ms "
        f"| exceptions | {' | '.join(FIELDS)} |"
    )
    print(f"|---|---|---|---|---|---|---|---|{'---|' * len(FIELDS)}")
    notes = []
    for label, run, extract in PARSERS:
        best, each, failures = min(
            (timed_round(run, corpus) for _ in range(args.rounds)), key=lambda r: r[0]
        )
        ranked = sorted(each)
        typical = len(small) / sum(each[i] for i in small)
        rates = ["-"] * len(FIELDS)
        if extract is not None:
            tally = measure(extract, args.corpus)
            rates = [f"{tally.rate(f):.1%} ({tally.agreed[f]}/{tally.compared[f]})" for f in FIELDS]
        print(
            f"| {label} | {best:.2f} | {len(corpus) / best:.0f} | {megabytes / best:.1f} | "
            f"{typical:.0f} | {statistics.median(each) * 1000:.2f} | "
            f"{ranked[int(len(ranked) * 0.99)] * 1000:.1f} | {len(failures)} | {' | '.join(rates)} |"
        )
        notes.extend(f"{label}: {line}" for line in failures)
    if fmp is None:
        print(
            "\nskipped the fast-mail-parser and hybrid rows: fast_mail_parser is not importable"
            " (pip install -e .[bench])"
        )
    for line in notes:
        print("  exception:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
