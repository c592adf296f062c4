"""Hostile headers cost time linear in their size (issue 14: a 6.5 MB Subject of `=?a?q?`
repeated held the daemon for half a minute)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse import parse
from mailbridge.parse.headers import TextDecoder, encoded_words

# The pattern header_decode used before: the reference for what an encoded-word is.
_REFERENCE = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?(.{0,4000}?)\?=")

MB = 1024 * 1024

# Shapes that made the old pattern rescan up to 4000 characters from every `=?`.
BOMBS = {
    "unclosed words, folded": b"=?a?q?\r\n ",
    "unclosed words, spaced": b"=?a?q? ",
    "open marks only": b"=?",
    "long words, never closed": b"=?utf-8?b?" + b"QUJD" * 1000 + b" ",
    "words just over the limit": b"=?utf-8?q?" + b"a" * 4001 + b"?= ",
}


def mail(header: str, value: bytes) -> bytes:
    return (
        b"From: Customer <c@example.test>\r\nTo: support@example.test\r\n"
        + header.encode()
        + b": "
        + value
        + b"\r\nMessage-ID: <bomb@example.test>\r\n\r\nbody\r\n"
    )


def bomb(shape: bytes, size: int) -> bytes:
    return shape * (size // len(shape))


def fastest(raw: bytes, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        parse(raw)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.timeout(60)  # the old pattern: 60 to 150 s for each of these
@pytest.mark.parametrize("header", ["Subject", "To"])
def test_five_megabyte_encoded_word_bomb_parses(header: str) -> None:
    parsed = parse(mail(header, bomb(b"=?a?q?\r\n ", 5 * MB)))
    assert parsed.message_id == "bomb@example.test"
    if header == "Subject":
        assert parsed.subject.startswith("=?a?q? =?a?q?")  # kept as written: nothing to decode


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", BOMBS.values(), ids=BOMBS.keys())
def test_bombs_cost_about_what_a_plain_header_of_that_size_costs(shape: bytes) -> None:
    plain = fastest(mail("Subject", bomb(b"plain text ", MB)))
    hostile = fastest(mail("Subject", bomb(shape, MB)))
    # linear: a few times the plain header's cost; the old pattern was 100-600 times
    assert hostile < 25 * plain + 0.05, (hostile, plain)


def test_a_huge_encoded_word_is_decoded_and_one_over_the_limit_is_kept() -> None:
    word = "=?utf-8?q?" + "a" * 4000 + "?="
    assert TextDecoder().header(word) == "a" * 4000
    longer = "=?utf-8?q?" + "a" * 4001 + "?="
    assert TextDecoder().header(longer) == longer


def test_words_before_never_closed_ones_decode() -> None:
    text = "=?utf-8?q?caf=C3=A9?= =?utf-8?b?w6k=?= " + "=?a?q? " * 10_000 + "end"
    assert TextDecoder().header(text) == "caféé " + "=?a?q? " * 10_000 + "end"


_PIECES = st.sampled_from(
    ["=?", "?=", "?", "=", "utf-8", "a", "q", "Q", "b", "B", " ", "\n", "\t", "*", "x" * 80]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_words_found_are_those_of_the_reference_pattern(text: str) -> None:
    expected = [
        (m.start(), m.end(), m.group(1), m.group(2), m.group(3)) for m in _REFERENCE.finditer(text)
    ]
    assert list(encoded_words(text)) == expected


def test_reference_agreement_near_the_length_limit() -> None:
    for length in (3999, 4000, 4001):
        for text in (
            "=?a?q?" + "x" * length + "?=",
            "=?a?q?" + "x" * length + "?= =?b?q?y?=",
            "=?a?q?=?a?q?" + "x" * (length - 6) + "?=",
            "=?a?q?" + "x" * (length // 2) + "\n" + "x" * (length // 2) + "?=",
        ):
            expected = [(m.start(), m.end()) for m in _REFERENCE.finditer(text)]
            assert [w[:2] for w in encoded_words(text)] == expected, (length, text[:20])
