"""Failed SMTP logins: each answered later than the last, then a lockout per client and per login.

A client is an IPv4 address or an IPv6 /64 (see `protocol.describe_peer`); a login counts
whether it exists or not, so a lockout reveals nothing about which logins exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

AUTH_FAILURE_DELAY = 1.0  # seconds after the first failure, doubling with each further one
AUTH_MAX_DELAY = 8.0
AUTH_TRACKED = 50_000  # clients and logins with recent failures remembered (bounds memory)


def auth_keys(client: str | None, login: str) -> list[tuple[str, str]]:
    """What failed logins count against: the client's bucket (none on a Unix socket) and the login."""
    keys = [("client", client)] if client is not None else []
    login = login.strip().lower()[:255]  # unknown logins too, so a lockout reveals no login
    return [*keys, ("login", login)] if login else keys


@dataclass
class _Strikes:
    failures: int = 0  # attempts still being checked count already, so parallel guesses stop too
    last: float = 0.0
    locked_until: float = 0.0


class AuthThrottle:
    """Failed logins per key: each answered later than the last, then a lockout refusing every try.

    A key's failures are forgotten `lockout` seconds after its last one, or when its lockout ends.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, tracked: int = AUTH_TRACKED
    ) -> None:
        self.clock = clock
        self.tracked = tracked
        self.strikes: dict[tuple[str, str], _Strikes] = {}

    def _get(self, key: tuple[str, str], now: float, lockout: float) -> _Strikes | None:
        entry = self.strikes.get(key)
        if entry is None:
            return None
        ended = now >= entry.locked_until if entry.locked_until else now - entry.last >= lockout
        if ended:
            del self.strikes[key]
            return None
        return entry

    def begin(self, keys: list[tuple[str, str]], max_failures: int, lockout: float) -> bool:
        """Count an attempt against every key; False (and nothing counted) if one is locked out."""
        now = self.clock()
        entries = [self._get(key, now, lockout) for key in keys]
        if any(e is not None and e.failures >= max_failures for e in entries):
            return False
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                entry = self.strikes[key] = _Strikes()
            entry.failures += 1
            entry.last = now
        if len(self.strikes) > self.tracked:  # a flood of fresh keys: forget the oldest
            for key in list(self.strikes)[: len(self.strikes) - self.tracked]:
                del self.strikes[key]
        return True

    def succeeded(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            entry = self.strikes.get(key)
            if entry is None:
                continue
            if key[0] == "login":
                del self.strikes[key]  # the agent knows the password: earlier typos are forgiven
            else:
                entry.failures -= 1  # only this attempt: one valid login must not clear a guesser

    def failed(
        self, keys: list[tuple[str, str]], max_failures: int, lockout: float
    ) -> tuple[float, list[tuple[str, str]]]:
        """The delay before answering 535, and the keys this failure has just locked out."""
        now = self.clock()
        worst, locked = 1, []
        for key in keys:
            entry = self.strikes.get(key)
            if entry is None:
                continue
            entry.last = now
            worst = max(worst, entry.failures)
            if entry.failures >= max_failures and not entry.locked_until:
                entry.locked_until = now + lockout
                locked.append(key)
        return auth_delay(worst), locked


def auth_delay(failures: int) -> float:
    """Seconds before answering a failed login: doubling with the failures, up to a cap."""
    return min(AUTH_FAILURE_DELAY * 2 ** min(failures - 1, 16), AUTH_MAX_DELAY)
