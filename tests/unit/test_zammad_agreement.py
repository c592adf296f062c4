"""How often `mailbridge.parse` agrees with Zammad's own expected parse results.

The comparison rules and the corpus location are in bench/zammad_agreement.py, which the
parser benchmark shares.

Run with `pytest -s` to see the rates and every disagreement.
"""

from __future__ import annotations

import pytest

from bench.zammad_agreement import FIELDS, Agreement, corpus_dir, extract_mailbridge, measure

THRESHOLD = 0.95
# from_email stays at 88/93 after honest effort; the five disagreements are deliberate:
# - mail117, mail118: an encoded-word in the local part. Zammad decodes it (mail118 then
#   claims agent@example.com); RFC 2047 forbids that and it is a spoofing vector, so
#   mailbridge keeps the address as written.
# - mail016, mail019: no From header at all. Zammad falls back on Reply-To; mailbridge
#   reports from_=None and leaves the author fallback (Sender, then Reply-To) to ingest.
# - mail076: `"Name"@example.com>`; Zammad keeps the stray '>' in the address.
FLOORS = {"from_email": 0.94}


@pytest.fixture(scope="module")
def agreement() -> Agreement:
    corpus = corpus_dir()
    if not (corpus / "zammad-expected").is_dir():
        print(f"corpus not found at {corpus} (set MAILBRIDGE_CORPUS)")
        pytest.skip(f"corpus not found at {corpus} (set MAILBRIDGE_CORPUS)")
    tally = measure(extract_mailbridge, corpus)
    print(f"\nZammad agreement: {tally.summary()}")
    for line in tally.disagreements:
        print("  disagree:", line)
    return tally


def test_every_expectation_was_compared(agreement: Agreement) -> None:
    assert agreement.errors == 0
    assert agreement.compared["from_email"] >= 90
    assert agreement.compared["attachments"] >= 40


@pytest.mark.parametrize("name", FIELDS)
def test_agreement_rate(agreement: Agreement, name: str) -> None:
    assert agreement.rate(name) >= FLOORS.get(name, THRESHOLD), agreement.summary()
