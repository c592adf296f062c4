"""Every message of the shared corpus (real mail from other projects' test suites) ingests without an
exception, and each ends as created, appended, duplicate, ignored or quarantined for a stated reason."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from mailbridge.envelope import Envelope, Source
from tests.configs import MakeApp
from tests.env import CORPUS

# Each expected non-ticket outcome, justified:
JUSTIFIED_QUARANTINE = {
    # an Outlook .msg (OLE compound file), not an RFC 5322 message at all
    "spamscope-mail-parser/mail_outlook_1.eml": "unparseable: no header section",
}
JUSTIFIED_DUPLICATES = {
    # the same mail as basic_email.eml with LF instead of CRLF line endings
    "mikel-mail/plain_emails__basic_email_lf.eml",
    # the same message as attachment_emails__attachment_pdf.eml apart from line endings
    "mikel-mail/attachment_emails__attachment_pdf_lf.eml",
    # RFC 2822 example 9 repeats example 8's Message-ID and text (a resent copy)
    "mikel-mail/rfc2822__example09.eml",
}


def corpus_files() -> list[Any]:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS} (set MAILBRIDGE_CORPUS)")
    return sorted(CORPUS.rglob("*.eml"))


def test_whole_corpus_ingests_without_exception(
    make_app: MakeApp, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(sqlite_url)
    files = corpus_files()
    assert len(files) == 382
    outcomes: dict[str, Any] = {}
    for batch_start in range(0, len(files), 50):
        batch = files[batch_start : batch_start + 50]
        items = [
            (p.read_bytes(), Envelope(), Source("file", str(p.relative_to(CORPUS)), live=False))
            for p in batch
        ]
        for path, out in zip(batch, app.ingestor.accept_many(items), strict=True):
            outcomes[str(path.relative_to(CORPUS))] = out
    counts = Counter(o.outcome for o in outcomes.values())
    with capsys.disabled():
        print(f"\ncorpus outcomes: {dict(sorted(counts.items()))}")
        for name, o in sorted(outcomes.items()):
            if o.outcome in ("quarantined", "ignored", "duplicate"):
                print(f"  {o.outcome:<11} {name}: {o.reason}")

    quarantined = {n: o.reason for n, o in outcomes.items() if o.outcome == "quarantined"}
    assert set(quarantined) == set(JUSTIFIED_QUARANTINE)
    for name, reason in quarantined.items():
        assert reason.startswith(JUSTIFIED_QUARANTINE[name])
    duplicates = {n for n, o in outcomes.items() if o.outcome == "duplicate"}
    assert duplicates == JUSTIFIED_DUPLICATES
    ignored = {n: o.reason for n, o in outcomes.items() if o.outcome == "ignored"}
    # every ignored one is a bounce or an automatic mail that threads to no ticket
    assert all(
        r.startswith(("bounce", "auto-submitted", "x-auto", "precedence", "own-loop"))
        for r in ignored.values()
    ), ignored
    assert all(
        o.outcome in ("created", "appended", "duplicate", "ignored", "quarantined")
        for o in outcomes.values()
    )
    assert counts["created"] + counts["appended"] == len(files) - len(quarantined) - len(
        duplicates
    ) - len(ignored)


def test_corpus_again_is_all_duplicates(make_app: MakeApp, sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    files = corpus_files()[:60]
    items = [(p.read_bytes(), Envelope(), Source("file", p.name, live=False)) for p in files]
    first = app.ingestor.accept_many(items)
    second = app.ingestor.accept_many(items)
    assert all(o.outcome == "duplicate" for o in second), [
        o for o in second if o.outcome != "duplicate"
    ]
    assert sum(o.outcome in ("created", "appended") for o in first) > 50
