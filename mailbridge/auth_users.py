"""The SMTP AUTH users file: one `login:hash` line per agent, hashes from a stdlib KDF.

Format of a line (blank lines and `#` comments are ignored):

    alice@example.com:scrypt$16384$<salt>$8$1$<base64 hash>
    bob@example.com:pbkdf2_sha256$600000$<salt>$<base64 hash>

scrypt (memory-hard) is what `hash_password` writes; PBKDF2-SHA256 is read too, for hosts
whose OpenSSL lacks scrypt. Create a line with the helper (it prompts for the password):

    python -m mailbridge.auth_users alice@example.com >> /etc/mailbridge/smtp-users

Logins compare case-insensitively (they are mail addresses); hashes never leave this module.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import hmac
import secrets
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mailbridge.errors import ConfigError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, ~50 ms: OWASP's minimum for scrypt
_DKLEN = 64
_SALT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: str, n: int, r: int, p: int) -> bytes:
    # maxmem must cover 128*n*r bytes, or OpenSSL refuses anything above its 32 MiB default
    return hashlib.scrypt(
        password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=_DKLEN
    )


def _pbkdf2(password: str, salt: str, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations, _DKLEN)


def hash_password(password: str, salt: str | None = None) -> str:
    """A users-file hash for password: `scrypt$N$salt$r$p$hash`."""
    salt = salt or "".join(secrets.choice(_SALT_ALPHABET) for _ in range(22))
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${salt}${SCRYPT_R}${SCRYPT_P}${_b64(digest)}"


def _check_format(stored: str) -> str | None:
    """None if `stored` is a hash this module can verify, else what is wrong with it."""
    parts = stored.split("$")
    if parts[0] == "scrypt":
        ok = len(parts) == 6 and all(p.isdigit() for p in (parts[1], parts[3], parts[4]))
        return None if ok else "scrypt hash must read scrypt$N$salt$r$p$hash"
    if parts[0] == "pbkdf2_sha256":
        ok = len(parts) == 4 and parts[1].isdigit()
        return None if ok else "pbkdf2 hash must read pbkdf2_sha256$iterations$salt$hash"
    return "unknown hash scheme (use scrypt$... or pbkdf2_sha256$...)"


def verify_password(password: str, stored: str) -> bool:
    """Whether password matches a stored hash; a malformed hash never matches."""
    if _check_format(stored) is not None:
        return False
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt":
            n, salt, r, p, expected = (
                int(parts[1]),
                parts[2],
                int(parts[3]),
                int(parts[4]),
                parts[5],
            )
            digest = _scrypt(password, salt, n, r, p)
        else:
            iterations, salt, expected = int(parts[1]), parts[2], parts[3]
            digest = _pbkdf2(password, salt, iterations)
    except (ValueError, MemoryError):  # absurd parameters in the file
        return False
    return hmac.compare_digest(_b64(digest), expected)


# One thread of its own: a burst of password guesses then costs at most one core and never
# queues ahead of the database commits in the default executor (threads start on first use).
_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailbridge-password-hash")

# verifying an unknown login costs as much as a known one, so timing does not reveal logins
_DUMMY_HASH = f"scrypt${SCRYPT_N}$timing-equaliser${SCRYPT_R}${SCRYPT_P}$AAAA"


@dataclass(frozen=True)
class Users:
    """The users file as loaded: login (lowercase) -> hash."""

    hashes: Mapping[str, str]
    path: Path | None = None

    def verify(self, login: str, password: str) -> bool:
        """Blocking (the KDF takes tens of milliseconds): call it from a worker thread."""
        stored = self.hashes.get(login.strip().lower())
        ok = verify_password(password, stored or _DUMMY_HASH)
        return ok and stored is not None

    async def verify_async(self, login: str, password: str) -> bool:
        """`verify` on the hashing thread, leaving the event loop and the database threads free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_HASHING, self.verify, login, password)

    def __len__(self) -> int:
        return len(self.hashes)


def parse_users(text: str, filename: str = "<users>") -> Users:
    """Parse a users file; every bad line is reported as `file:line: auth_users_file: ...`."""
    hashes: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login, sep, stored = line.partition(":")
        login = login.strip().lower()
        problem = "expected login:hash" if not (sep and login) else _check_format(stored.strip())
        if problem is None and login in hashes:
            problem = f"duplicate login {login!r}"
        if problem:
            problems.append(f"{filename}:{number}: auth_users_file: {problem}")
            continue
        hashes[login] = stored.strip()
    if problems:
        raise ConfigError(problems)
    return Users(hashes)


def load_users(path: Path) -> Users:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{path}:1: auth_users_file: cannot read: {reason}"]) from exc
    users = parse_users(text, str(path))
    return Users(users.hashes, path)


def main(argv: list[str] | None = None) -> int:
    """`python -m mailbridge.auth_users LOGIN`: prompt for a password, print `LOGIN:hash`."""
    parser = argparse.ArgumentParser(
        prog="python -m mailbridge.auth_users",
        description="Print one `LOGIN:hash` line for auth_users_file. The password is prompted "
        "for twice on a terminal, else read from the first line of stdin.",
        epilog="example: python -m mailbridge.auth_users alice@example.com "
        ">> /etc/mailbridge/smtp-users",
    )
    parser.add_argument("login", metavar="LOGIN", help="the agent's login, usually a mail address")
    login = parser.parse_args(argv).login
    if ":" in login:
        parser.error("LOGIN cannot contain ':'")
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("passwords differ", file=sys.stderr)
            return 1
    else:  # scripted: the password is the first line on stdin
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(f"{login.lower()}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
