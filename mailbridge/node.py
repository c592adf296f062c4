"""Who this process is in a cluster: a stable node id, and the incarnation that runs it now.

The node id names a machine (`[cluster] node_id`, default the host name) and stays the same when
the daemon restarts. Leases record both, so a node restarted after a crash takes its IMAP folders
back at once, while anything else waits for the lease to expire. "At once" needs proof that the
earlier process is gone: it ran under the same kernel boot and in the same PID namespace as we do,
and its PID is no longer running (or now belongs to a process that started at another time). A
process that cannot be checked, on another machine or in another container, is treated as alive.
So two processes with the same node id (one config started twice, one id on two machines) never
poll one folder together: the second one waits, as a different node would.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PROC = Path("/proc")


def default_node_id(configured: str | None) -> str:
    return configured or socket.gethostname()


@dataclass(frozen=True, slots=True)
class Incarnation:
    """One running process, in terms another process on the same machine can verify."""

    host: str
    pid: int
    start: str  # /proc/PID/stat starttime (clock ticks since boot), else wall-clock ns
    boot: str  # kernel boot id; "" where there is no /proc
    pidns: str  # PID namespace; a PID means nothing outside it

    def __str__(self) -> str:
        return (
            f"host={self.host} pid={self.pid} start={self.start} boot={self.boot} "
            f"pidns={self.pidns}"
        )

    @classmethod
    def parse(cls, text: str | None) -> Incarnation | None:
        fields = dict(part.partition("=")[::2] for part in (text or "").split())
        try:
            return cls(
                fields["host"], int(fields["pid"]), fields["start"], fields["boot"], fields["pidns"]
            )
        except (KeyError, ValueError):
            return None  # written by an older version: nothing to verify, so it is left to expire

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def is_gone(self) -> bool:
        """True only when this process provably no longer runs (checked from this process)."""
        here = current()
        if not self.boot or (self.boot, self.pidns) != (here.boot, here.pidns):
            return False
        if (self.pid, self.start) == (here.pid, here.start):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # running as another user: it exists, compare its start time below
        started, state = _proc_stat(self.pid)
        if started is None:
            return False  # hidden from us (hidepid / ProtectProc): assume it is alive
        return started != self.start or state in ("Z", "X")  # PID reused, or dead unreaped


def _proc_stat(pid: int | str) -> tuple[str | None, str | None]:
    """(starttime, state) from /proc/PID/stat; (None, None) when unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None, None
    # the command name may contain spaces and parentheses: fields start after the last ")"
    fields = text[text.rfind(")") + 2 :].split()
    return (fields[19], fields[0]) if len(fields) > 19 else (None, None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return ""


@cache
def _incarnation(pid: int) -> Incarnation:
    started = _proc_stat("self")[0] or str(time.time_ns())
    boot = _read(_PROC / "sys" / "kernel" / "random" / "boot_id")
    return Incarnation(socket.gethostname(), pid, started, boot, _pid_namespace())


def current() -> Incarnation:
    """This process (keyed by PID, so a forked child is a new incarnation)."""
    return _incarnation(os.getpid())
