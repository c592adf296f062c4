"""Authentication-Results (RFC 8601): the grammar with comments removed, and the authority decision."""

from __future__ import annotations

import time

import pytest

from mailbridge.authres import AuthResError, agent_authority, parse
from mailbridge.config import parse_settings
from mailbridge.envelope import peer_trusted
from mailbridge.errors import ConfigError

TRUSTED = frozenset({"mx.example.com"})


def decide(*values: str) -> tuple[bool, str]:
    found = agent_authority(values, TRUSTED, "example.com")
    return found.granted, found.reason


def test_a_real_header_parses_by_the_grammar() -> None:
    header = parse(
        "mx.example.com 1 (the MX);\r\n dkim=pass (2048-bit key; unprotected) header.d=example.com"
        ' header.s=mail header.b="Ab/c+d";\r\n spf=pass smtp.mailfrom=alice@example.com;'
        " dmarc=pass (p=none dis=none) header.from=example.com"
    )
    assert header.authserv_id == "mx.example.com"
    assert [(r.method, r.result) for r in header.results] == [
        ("dkim", "pass"),
        ("spf", "pass"),
        ("dmarc", "pass"),
    ]
    assert header.results[0].properties == (
        ("header.d", "example.com"),
        ("header.s", "mail"),
        ("header.b", "Ab/c+d"),
    )
    assert header.results[1].prop("smtp.mailfrom") == "alice@example.com"


def test_a_semicolon_inside_a_comment_or_quoted_string_does_not_split() -> None:
    header = parse(
        'mx.example.com; dmarc=pass (p=none; dis=none) reason="a; b" header.from=evil.test'
    )
    assert len(header.results) == 1
    assert header.results[0].prop("header.from") == "evil.test"
    nested = parse("mx.example.com; dmarc=pass (x (y; z) \\) ;) header.from=example.com")
    assert nested.results[0].prop("header.from") == "example.com"


def test_cfws_around_the_dot_and_equals_and_quoted_values() -> None:
    header = parse('mx.example.com; dkim = pass header . d = "example.com"; none.x=y')
    assert header.results[0].prop("header.d") == "example.com"


def test_none_and_broken_headers() -> None:
    assert parse("mx.example.com; none").results == ()
    for broken in (
        "mx.example.com; dmarc=pass (unterminated",
        'mx.example.com; dmarc=pass header.from="example.com',
        "mx.example.com",
        "mx.example.com 2; dmarc=pass header.from=example.com",
        "; dmarc=pass header.from=example.com",
    ):
        with pytest.raises(AuthResError):
            parse(broken)


def test_a_pass_for_the_from_domain_from_the_trusted_server_gives_authority() -> None:
    assert decide("mx.example.com; dmarc=pass header.from=example.com") == (
        True,
        "authentication-results mx.example.com: dmarc=pass header.from=example.com",
    )
    assert decide("MX.Example.COM; dkim=pass header.d=Example.com")[0]


def test_a_forged_pass_below_a_real_fail_is_ignored() -> None:
    real = "mx.example.com; dmarc=fail (p=reject) header.from=example.com"
    forged = "mx.example.com; dmarc=pass header.from=example.com"
    assert decide(real, forged) == (False, "authentication-results mx.example.com: dmarc=fail")
    # and a fail wins within the header too, whatever else passes
    assert not decide("mx.example.com; dkim=pass header.d=example.com; dmarc=fail")[0]
    assert not decide(
        "mx.example.com; dkim=pass header.d=example.com; dkim=fail header.d=example.com"
    )[0]


def test_only_the_topmost_trusted_header_counts() -> None:
    # an unrelated system's header above it is skipped; the one below the trusted one is not read
    other = "spamfilter.internal; dmarc=fail header.from=example.com"
    real = "mx.example.com; spf=pass smtp.mailfrom=example.com"
    forged = "mx.example.com; dmarc=pass header.from=example.com"
    assert decide(other, real, forged)[0] is False
    assert decide(other, forged)[0] is True
    assert decide("mx.attacker.example; dmarc=pass header.from=example.com") == (
        False,
        "no authentication-results from a trusted authserv-id",
    )


def test_a_pass_must_name_the_from_domain() -> None:
    assert not decide("mx.example.com; dmarc=pass")[0]
    assert not decide("mx.example.com; dmarc=pass (p=none; dis=none) header.from=evil.test")[0]
    assert not decide("mx.example.com; dkim=pass header.i=@example.com")[0]
    assert not decide("mx.example.com; dkim=pass header.d=example.com.evil.test")[0]
    assert not decide("mx.example.com; dmarc=pass header.from=example.com header.from=evil.test")[0]
    assert not decide("mx.example.com; spf=pass smtp.mailfrom=alice@example.com")[0]
    # a pass whose properties do not parse is no pass
    assert not decide("mx.example.com; dmarc=pass action=none header.from=example.com")[0]


def test_an_unreadable_trusted_header_fails_closed() -> None:
    granted, reason = decide(
        "mx.example.com; dmarc=pass (oops header.from=example.com",
        "mx.example.com; dmarc=pass header.from=example.com",
    )
    assert not granted and "unreadable" in reason


def test_a_huge_header_parses_in_linear_time() -> None:
    value = "mx.example.com" + "; spf=pass (a; b) smtp.mailfrom=a@b" * 30_000  # ~1 MB
    started = time.process_time()
    assert len(parse(value).results) == 30_000
    nested = "mx.example.com; dmarc=pass " + "(" * 100_000 + ")" * 100_000
    assert parse(nested + " header.from=example.com").results[0].complete
    # the authres package on PyPI took 12 s for a quarter of this; allow a slow shared machine
    assert time.process_time() - started < 5


def test_trusted_peers() -> None:
    peers = ("127.0.0.0/8", "::1", "unix", "192.0.2.0/24")
    assert peer_trusted(("127.0.0.1", 2525), peers)
    assert peer_trusted(("::ffff:192.0.2.7", 2525, 0, 0), peers)
    assert peer_trusted(("::1", 2525, 0, 0), peers)
    assert peer_trusted("", peers)  # a Unix socket
    assert not peer_trusted(("198.51.100.1", 2525), peers)
    assert not peer_trusted("", ("127.0.0.1",))
    assert not peer_trusted(("127.0.0.1", 2525), ("10.0.0.0/8",))


def test_trusted_peers_and_max_participants_in_the_config() -> None:
    settings = parse_settings("", "mailbridge.toml", env={})
    assert settings.smtp.trusted_peers == ("127.0.0.0/8", "::1", "unix")
    assert settings.tickets.max_participants == 20
    text = '[smtp]\ntrusted_peers = ["10.0.0.0/8", "mx.example.com"]\n[tickets]\nmax_participants = 0\n'
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "mailbridge.toml", env={})
    assert info.value.problems == [
        "mailbridge.toml:2: smtp.trusted_peers[1]: not an IP address or network: "
        "'mx.example.com' (e.g. 127.0.0.1, 10.0.0.0/8, ::1 or unix)",
        "mailbridge.toml:4: tickets.max_participants: must be at least 1",
    ]
