"""What a hot path could realistically take from fast-mail-parser, measured against ours.

    python bench/fmp_hybrid.py [--corpus DIR]

fast-mail-parser (Rust `mailparse` via pyo3) hands out header values already decoded
(RFC 2047 applied, 8-bit bytes that are not UTF-8 read as Latin-1, the mbox From_ line
taken for a header), so it cannot be mailbridge's header reader. The realistic hybrid keeps
every header field from `mailbridge.parse_headers_only` (our decoding, raw classification
headers, defects) and takes only the body text and the attachment list from
fast-mail-parser; when fast-mail-parser raises, the message falls back to the full stdlib
path.

This module prints, for the whole corpus, how often the hybrid falls back and how far its
body text and attachments (names and sizes) agree with `mailbridge.parse`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.zammad_agreement import Extract, corpus_dir  # noqa: E402
from mailbridge.errors import ParseError  # noqa: E402
from mailbridge.parse import Attachment, ParsedMessage, parse, parse_headers_only  # noqa: E402
from mailbridge.parse.attachment_names import extension, sanitize_filename  # noqa: E402
from mailbridge.parse.html import html_to_text  # noqa: E402
from mailbridge.parse.mime_split import prepare  # noqa: E402

if TYPE_CHECKING:
    from fast_mail_parser import PyMail

try:
    import fast_mail_parser as fmp

    FMP_VERSION = version("fast-mail-parser")
except (ImportError, PackageNotFoundError):  # a bench-only dependency: pip install -e .[bench]
    fmp = None
    FMP_VERSION = ""

_STEMS = {"image": "image", "video": "video", "audio": "audio", "text": "document"}
FALLBACKS: Counter[str] = Counter()


def _attachments(mail: PyMail) -> tuple[Attachment, ...]:
    """fast-mail-parser's parts, named as mailbridge names them when the mail gives none."""
    names: set[str] = set()
    found = []
    for part in mail.attachments:
        ctype = (part.mimetype or "application/octet-stream").lower()
        name = sanitize_filename(part.filename or "")
        if not name:
            stem = _STEMS.get(ctype.split("/", 1)[0], "attachment")
            name, counter = stem + extension(ctype), 0
            while name in names:
                counter += 1
                name = f"{stem}{counter}{extension(ctype)}"
        names.add(name)
        found.append(Attachment(name, ctype, len(part.content)))
    return tuple(found)


def _body(mail: PyMail) -> str:
    plain = [t for t in mail.text_plain if t.strip()]
    text = "\n".join(plain) if plain else html_to_text("\n".join(mail.text_html))
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def hybrid_parse(raw: bytes) -> ParsedMessage:
    """Headers by mailbridge, body and attachments by fast-mail-parser, stdlib fallback."""
    head = parse_headers_only(raw)  # raises ParseError only for "not a mail"
    data, _ = prepare(raw)  # fast-mail-parser rejects leading whitespace and junk lines
    try:
        mail = fmp.parse_email(data)  # type: ignore[union-attr]
    except fmp.ParseError as exc:  # type: ignore[union-attr]
        FALLBACKS[type(exc).__name__] += 1
        return parse(raw)
    warnings = tuple(f"fmp:{w.kind}" for w in mail.warnings)
    return dataclasses.replace(
        head, body_text=_body(mail), attachments=_attachments(mail), defects=head.defects + warnings
    )


def run_hybrid(raw: bytes) -> ParsedMessage | None:
    try:
        return hybrid_parse(raw)
    except ParseError:
        return None


def extract_hybrid(raw: bytes) -> Extract:
    msg = run_hybrid(raw)
    if msg is None:
        return Extract(None, None, None, [])
    sender = msg.from_
    return Extract(
        sender.addr if sender else None,
        sender.name if sender else None,
        msg.subject,
        [a.filename for a in msg.attachments],
    )


def _words(text: str) -> str:
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--corpus", type=Path, default=corpus_dir())
    args = options.parse_args()
    if fmp is None:
        print("fast-mail-parser is not importable: pip install -e .[bench]")
        return 0
    files = sorted(args.corpus.rglob("*.eml"))
    tally: Counter[str] = Counter()
    differ: dict[str, list[str]] = {"body": [], "names": [], "sizes": []}
    for path in files:
        raw = path.read_bytes()
        try:
            ours = parse(raw)
        except ParseError:
            continue
        before = sum(FALLBACKS.values())
        theirs = hybrid_parse(raw)
        if sum(FALLBACKS.values()) > before:
            tally["fallback"] += 1
            continue
        tally["compared"] += 1
        label = f"{path.parent.name}/{path.name}"
        checks = {
            "body": _words(ours.body_text) == _words(theirs.body_text),
            "names": sorted(a.filename for a in ours.attachments)
            == sorted(a.filename for a in theirs.attachments),
            "sizes": sorted(a.size for a in ours.attachments)
            == sorted(a.size for a in theirs.attachments),
        }
        for key, same in checks.items():
            tally[key] += same
            if not same:
                differ[key].append(label)
    compared = tally["compared"]
    print(f"{len(files)} messages; hybrid fell back to the stdlib path on {tally['fallback']}")
    print(f"  fallbacks by fast-mail-parser exception: {dict(FALLBACKS)}")
    for key in ("body", "names", "sizes"):
        print(f"  same {key} as mailbridge.parse: {tally[key]}/{compared}")
        for label in differ[key][:12]:
            print(f"    differs: {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
