"""mailbridge.parse.large: big mail parses like the ordinary path, without the stdlib seeing
its long bodies. Memory itself is measured by bench/bigmail_bench.py, not here."""

from __future__ import annotations

import base64
import binascii
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mailbridge.parse as parse_module
from mailbridge.errors import ParseError
from mailbridge.parse import Attachment, ParsedMessage, mime_walk, parse
from mailbridge.parse import large as large_message

_DEFAULT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CORPUS = Path(os.environ.get("MAILBRIDGE_CORPUS", _DEFAULT_CORPUS))
CORPUS_FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []
MB = 1024 * 1024


def b64_lines(data: bytes, eol: bytes = b"\r\n") -> bytes:
    return base64.encodebytes(data).replace(b"\n", eol)


def big_message(attachment_mb: float, seed: int = 7) -> bytes:
    """A realistic large mail: alternative body, base64 attachments (one with odd line
    lengths and junk), a quoted-printable text attachment, a forwarded message with its own
    attachment, a uuencoded part, non-ASCII headers and names."""
    rnd = random.Random(seed)
    blob = rnd.randbytes(int(attachment_mb * MB))
    odd = b64_lines(rnd.randbytes(300_000)).replace(b"\r\n", b"\r\n ", 50)[:-7] + b"!!\r\n"
    qp_text = "Ligne de journal: état=ok, café ☕ 12:00:01\n" * 3000
    qp = binascii.b2a_qp(qp_text.encode("utf-8")).replace(b"\n", b"\r\n")
    inner_pdf = b64_lines(rnd.randbytes(400_000))
    uu = binascii.b2a_uu(b"hello uu\n" * 5)
    parts = [
        b"Return-Path: <kunde@example.de>\r\n"
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <kunde@example.de>\r\n"
        b"To: Support <support@example.com>, other@example.com\r\n"
        b"Cc: =?iso-8859-1?q?Fran=E7oise?= <f@example.fr>\r\n"
        b"Subject: =?utf-8?b?R3LDtsOfZXIgQW5oYW5nIMOcYmVyc2ljaHQ=?=\r\n"
        b"Date: Tue, 04 Mar 2025 10:11:12 +0100\r\n"
        b"Message-ID: <big.6mb@example.de>\r\n"
        b"In-Reply-To: <ticket-1@example.com>\r\n"
        b"References: <ticket-0@example.com> <ticket-1@example.com>\r\n"
        b"Auto-Submitted: no\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"This is a multi-part message in MIME format.\r\n",
        b"--outer\r\n"
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Hallo, anbei die Dateien. Grüße\r\nJürgen\r\n".encode()
        + b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Hallo, <b>anbei</b> die Dateien.</p>\r\n--alt--\r\n",
        b"--outer\r\nContent-Type: application/pdf;\r\n"
        b" name*=utf-8''Pr%C3%BCfbericht%202025.pdf\r\n"
        b"Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64_lines(blob),
        b"--outer\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + odd,
        b"--outer\r\nContent-Type: text/plain; charset=utf-8; name=journal.log\r\n"
        b"Content-Disposition: attachment\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + qp
        + b"\r\n",
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: Someone <someone@example.org>\r\nSubject: Fwd: Rechnung\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b'--in\r\nContent-Type: application/pdf; name="rechnung.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + inner_pdf + b"--in--\r\n",
        b"--outer\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 hello.txt\r\n"
        + uu.replace(b"\n", b"\r\n")
        + b"`\r\nend\r\n",
        b"--outer--\r\nepilogue\r\n",
    ]
    return b"".join(parts)


def parse_ordinary(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> ParsedMessage:
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "LARGE_MESSAGE_BYTES", 1 << 62)
        return parse(raw)


def parse_large(raw: bytes, monkeypatch: pytest.MonkeyPatch, min_run: int | None = None):
    """The large path, asserted to have been taken (not the fallback)."""
    taken: list[bool] = []
    real = large_message.split_large

    def spy(data: bytes, defects: list[str], min_run_: int | None = None):
        msg = real(data, defects, min_run if min_run is not None else min_run_)
        taken.append(msg is not None)
        return msg

    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "LARGE_MESSAGE_BYTES", 0)
        patch.setattr(parse_module, "split_large", spy)
        parsed = parse(raw)
    return parsed, taken == [True]


def test_six_megabytes_parse_like_the_ordinary_path(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = big_message(4.5)
    assert len(raw) > 6 * MB
    skeleton, spans = large_message.elide(raw, large_message.MIN_RUN)
    assert len(spans) >= 3 and len(skeleton) < 64 * 1024
    large, taken = parse_large(raw, monkeypatch)
    assert taken
    ordinary = parse_ordinary(raw, monkeypatch)
    assert large == ordinary  # every field, defects included
    assert large == parse(raw)  # and parse() takes this path by itself
    assert large.from_ is not None and large.from_.name == "Jürgen Müller"
    assert large.subject == "Größer Anhang Übersicht"
    assert large.message_id == "big.6mb@example.de"
    assert large.in_reply_to == ("ticket-1@example.com",)
    assert large.body_text == "Hallo, anbei die Dateien. Grüße\nJürgen"
    names = [a.filename for a in large.attachments]
    assert names == [
        "Prüfbericht 2025.pdf",
        "image.png",
        "journal.log",
        "Fwd: Rechnung.eml",
        "hello.txt",
    ]
    assert large.attachments[0] == Attachment(
        "Prüfbericht 2025.pdf", "application/pdf", int(4.5 * MB)
    )


def test_twenty_megabytes_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = big_message(20)
    parsed = parse(raw)
    assert parsed.subject == "Größer Anhang Übersicht"
    assert parsed.attachments[0].size == 20 * MB
    assert parsed.body_text.startswith("Hallo, anbei")
    assert parsed.attachments == parse_ordinary(raw, monkeypatch).attachments


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_single_part_base64_and_line_endings(monkeypatch: pytest.MonkeyPatch, eol: bytes) -> None:
    payload = os.urandom(200_001)
    raw = (
        b"From: a@example.com\r\nSubject: one part\r\nContent-Type: application/zip\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64_lines(payload, eol)
    ).replace(b"\r\n", eol)
    large, taken = parse_large(raw, monkeypatch)
    assert taken
    assert large == parse_ordinary(raw, monkeypatch)
    assert large.attachments[0].size == 200_001


def test_text_body_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "Zeile mit Umlauten äöü und Text\n"
    raw = (
        b"From: a@example.com\r\nSubject: log\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64_lines((line * 20_000).encode())
    )
    monkeypatch.setattr(mime_walk, "MAX_TEXT_BYTES", 100_000)
    large, taken = parse_large(raw, monkeypatch)
    assert taken
    ordinary = parse_ordinary(raw, monkeypatch)
    assert "BodyTextTruncated" in large.defects
    assert 50_000 < len(large.body_text) < len(ordinary.body_text)
    assert ordinary.body_text.startswith(large.body_text)
    assert "\ufffd" not in large.body_text[:-1]


def test_marker_text_in_the_mail_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = big_message(0.5).replace(b"epilogue", b"\x00MBX0\x00")
    large, taken = parse_large(raw, monkeypatch)
    assert not taken
    assert large == parse_ordinary(raw, monkeypatch)


def test_not_a_mail_is_still_a_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse_module, "LARGE_MESSAGE_BYTES", 0)
    with pytest.raises(ParseError):
        parse(b"\r\n" + b"A" * 100_000)


@pytest.mark.skipif(not CORPUS_FILES, reason=f"corpus not found at {CORPUS}")
def test_corpus_agrees_with_every_run_elided(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every run of body lines elided (not just long ones), each corpus mail parses
    exactly as the ordinary path parses it, or the large path declines."""
    taken_count = 0
    for path in CORPUS_FILES:
        raw = path.read_bytes()
        try:
            ordinary = parse_ordinary(raw, monkeypatch)
        except ParseError:
            continue
        large, taken = parse_large(raw, monkeypatch, min_run=1)
        taken_count += taken
        assert large == ordinary, path
    assert taken_count > len(CORPUS_FILES) // 2


_FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b"\x0c", b"--b", b"--b--", b"--c", b"-", b" ", b"\t", b":", b"From ",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/alternative; boundary=c\r\n",
    b"Content-Type: message/delivery-status\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"Content-Type: text/html\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n", b"begin 644 a.txt\n", b"QUJD", b"=3D",
    b"text", b"X-A: b", b"\xc3\xa4", b"\x00", b"=", b"end\n", b"<p>hi</p>",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=80))
def test_fuzz_agrees_with_the_ordinary_path(pieces: list[bytes]) -> None:
    raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n" + b"".join(pieces)
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            ordinary = parse_ordinary(raw, monkeypatch)
        except ParseError:
            return
        large, _taken = parse_large(raw, monkeypatch, min_run=1)
    assert large == ordinary
