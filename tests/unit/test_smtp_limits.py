"""SMTP limits (issue 14): the failed-login bookkeeping behind `454 4.7.0`, on a clock the test
moves, and the descriptor budget the systemd unit grants for `max_connections`."""

from __future__ import annotations

import re
from pathlib import Path

from mailbridge.config import SmtpSettings
from mailbridge.sources.smtp.auth import (
    AUTH_FAILURE_DELAY,
    AUTH_MAX_DELAY,
    AuthThrottle,
    auth_keys,
)
from mailbridge.sources.smtp.sockets import FD_RESERVE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_failure_waits_longer_then_the_login_is_locked_until_the_cooldown_ends() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    keys = auth_keys("203.0.113.9", "Alice@Example.com")
    assert keys == [("client", "203.0.113.9"), ("login", "alice@example.com")]
    delays = []
    for _ in range(5):
        assert throttle.begin(keys, 5, 300)
        delay, locked = throttle.failed(keys, 5, 300)
        delays.append(delay)
    assert delays == [min(AUTH_FAILURE_DELAY * 2**i, AUTH_MAX_DELAY) for i in range(5)]
    assert delays == sorted(delays) and delays[0] < delays[-1]
    assert sorted(locked) == keys  # the fifth failure locked both
    clock.now += 299
    assert not throttle.begin(keys, 5, 300)  # refused, whatever the password would have been
    assert not throttle.begin(auth_keys("198.51.100.1", "alice@example.com"), 5, 300)
    clock.now += 1
    assert throttle.begin(keys, 5, 300)  # cooldown over: a fresh start


def test_a_success_forgives_the_login_but_not_the_address() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    alice, bob = auth_keys("203.0.113.9", "alice"), auth_keys("203.0.113.9", "bob")
    for _ in range(2):
        assert throttle.begin(alice, 3, 60)
        throttle.failed(alice, 3, 60)
    assert throttle.begin(alice, 3, 60)
    throttle.succeeded(alice)
    assert throttle.strikes.get(("login", "alice")) is None
    assert throttle.begin(bob, 3, 60)  # the address's third failure
    assert throttle.failed(bob, 3, 60)[1] == [("client", "203.0.113.9")]
    assert not throttle.begin(alice, 3, 60)


def test_failures_are_forgotten_after_a_quiet_spell_and_memory_is_bounded() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock, tracked=100)
    keys = auth_keys(None, "alice")  # a Unix-socket client: only the login counts
    assert keys == [("login", "alice")]
    for _ in range(2):
        throttle.begin(keys, 3, 60)
        throttle.failed(keys, 3, 60)
    clock.now += 60
    assert throttle.begin(keys, 3, 60)
    assert throttle.strikes[("login", "alice")].failures == 1  # the old two are gone
    for n in range(1000):  # a guesser rotating logins cannot grow the table without bound
        throttle.begin(auth_keys(None, f"user{n}"), 3, 60)
    assert len(throttle.strikes) == 100


def test_the_unit_grants_descriptors_for_the_default_max_connections() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "mailbridge.service"
    match = re.search(r"^LimitNOFILE=(\d+)$", unit.read_text(), re.MULTILINE)
    assert match, "mailbridge.service sets no LimitNOFILE"
    assert int(match.group(1)) >= SmtpSettings().max_connections + FD_RESERVE
