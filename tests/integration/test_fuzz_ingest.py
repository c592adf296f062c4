"""Property: whatever bytes arrive, ingest ends in a ticket, an ignore or a quarantine with a reason;
never an exception. Mutations of real corpus mail: truncation, flipped bytes, duplicated and folded
headers, broken MIME boundaries, bogus charsets."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.envelope import Envelope, Source
from tests.env import CORPUS

SAMPLES = [
    "zammad/mail001.eml",
    "zammad/mail043.eml",
    "zammad/mail060.eml",
    "zammad/mail117.eml",
    "flanker/torture.eml",
    "flanker/bounce__broken-mime.eml",
    "cpython/msg_15.eml",
    "cpython/msg_35.eml",
    "mikel-mail/rfc2822__example01.eml",
    "django-helpdesk/pgp.eml",
    "php-mime-mail-parser/m0020.eml",
]


def load_samples() -> list[bytes]:
    found = [CORPUS / s for s in SAMPLES if (CORPUS / s).exists()]
    if not found:
        pytest.skip(f"corpus not found at {CORPUS}")
    # cap the size so each example stays fast; truncation is one of the mutations anyway
    return [p.read_bytes()[:60_000] for p in found]


def truncate(raw: bytes, at: int) -> bytes:
    return raw[: at % (len(raw) + 1)]


def flip(raw: bytes, at: int, value: int) -> bytes:
    if not raw:
        return raw
    i = at % len(raw)
    return raw[:i] + bytes([value]) + raw[i + 1 :]


def duplicate_headers(raw: bytes, _at: int) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    return b"\n".join(lines + lines[:5]) + sep + body


def fold_headers(raw: bytes, at: int) -> bytes:
    return re.sub(rb"(: )", b":\r\n\t " * (1 + at % 3), raw, count=8)


def break_boundaries(raw: bytes, at: int) -> bytes:
    return re.sub(rb"boundary=\"?([^\";\r\n]+)", b'boundary="x' + str(at).encode() + b'"', raw)


def bogus_charset(raw: bytes, at: int) -> bytes:
    name = [b"x-unknown", b"utf-99", b"\xff\xfe", b"iso-8859-99", b"'; DROP"][at % 5]
    return re.sub(rb"charset=\"?[A-Za-z0-9_-]+\"?", b"charset=" + name, raw)


MUTATIONS = [truncate, duplicate_headers, fold_headers, break_boundaries, bogus_charset]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.integers(min_value=0, max_value=len(SAMPLES) - 1),
    steps=st.lists(
        st.tuples(st.integers(0, len(MUTATIONS)), st.integers(0, 10**6), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_mail_is_always_handled(sample: int, steps: list[tuple[int, int, int]]) -> None:
    raw = SAMPLE_BYTES[sample % len(SAMPLE_BYTES)]
    for which, at, value in steps:
        raw = flip(raw, at, value) if which == len(MUTATIONS) else MUTATIONS[which](raw, at)
    out = APP.ingestor.accept(raw, Envelope(), Source("file", "fuzz", live=False))
    assert out.outcome in ("created", "appended", "duplicate", "ignored", "quarantined")
    assert out.reason
    if out.outcome in ("created", "appended"):
        assert out.ticket and out.message
    if out.outcome in ("ignored", "quarantined"):
        assert out.quarantine


SAMPLE_BYTES: list[bytes] = []
APP: Any = None


@pytest.fixture(autouse=True, scope="module")
def _app() -> Any:
    global APP, SAMPLE_BYTES
    from mailbridge.app import App
    from mailbridge.config import parse_settings

    SAMPLE_BYTES = load_samples()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp)}/fuzz.db"
        APP = App.build(parse_settings(f'[database]\nurl = "{url}"\n', "fuzz.toml"))
        yield APP
        APP.close()
