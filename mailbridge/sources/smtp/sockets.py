"""The listening socket's surroundings: the descriptor budget, accept() failures, the Unix socket.

Connections in total are bounded by `max_connections`; each needs a descriptor, so the soft limit
is raised to fit them, and when descriptors run out anyway asyncio's flood of accept() errors is
turned into one line per run of failures.
"""

from __future__ import annotations

import grp
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("mailbridge.smtp")

ACCEPT_REPORT_EVERY = 60.0  # seconds: at most one "cannot accept" line per run of failures
FD_RESERVE = 256  # descriptors beside the SMTP sessions: database, IMAP, outbox, refused sockets
_ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's message, then a traceback


class AcceptErrors(logging.Filter):
    """One line when accept() starts failing and one when it works again, not asyncio's flood.

    asyncio logs every accept() that fails for want of descriptors, with a traceback, up to the
    backlog at a time, and retries a second later. Near the limit the state flaps as descriptors
    come and go, so a new run of failures is reported at most once a minute, with the count.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.failing = False
        self.reported = False  # this run of failures has been logged
        self.failures = 0  # since the last line
        self.next_report = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_ACCEPT_ERROR):
            return True
        self.failing = True
        self.failures += 1
        now = self.clock()
        if not self.reported and now >= self.next_report:
            self.reported, self.next_report = True, now + ACCEPT_REPORT_EVERY
            error = record.exc_info[1] if record.exc_info else None
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "cannot accept connections: %s (descriptor limit %d, %d failed accept()s);"
                " retrying every second",
                error or "out of system resources",
                soft,
                self.failures,
            )
        return False

    def recovered(self) -> None:
        if not self.failing:
            return
        self.failing = False
        if self.reported:
            self.reported = False
            log.warning("accepting connections again after %d failed accept()s", self.failures)
            self.failures = 0


ACCEPT_ERRORS = AcceptErrors()


def fit_descriptors(max_connections: int) -> None:
    """Raise the soft descriptor limit toward the hard one so max_connections fit; warn if not."""
    needed = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "max_connections = %d needs about %d file descriptors but the limit is %d: "
            "raise LimitNOFILE (systemd) or ulimit -n, or lower max_connections",
            max_connections,
            needed,
            soft,
        )


def restrict_socket(path: Path, mode: int, group: str | None) -> None:
    """Who may deliver over the Unix socket: its mode and group, set before READY is announced.

    Until then the socket has the umask's mode (0755 under the usual 022: only we can connect,
    since connecting needs write permission), so there is no moment open to every local user.
    """
    if group is not None:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, PermissionError) as exc:
            # a non-root daemon may only hand the socket to a group it is a member of
            raise OSError(
                f"cannot give {path} to group {group!r} (is this user a member of it?): {exc}"
            ) from exc
    os.chmod(path, mode)


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a crashed run; refuse if another process still listens on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody answers: left over from an earlier run
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")
