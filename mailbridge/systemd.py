"""The systemd notification protocol (sd_notify(3)), stdlib only: READY/RELOADING/STOPPING
through $NOTIFY_SOCKET, and the WATCHDOG pings systemd asks for with WATCHDOG_USEC."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

# the daemon's logger: operators filter the journal by it
log = logging.getLogger("mailbridge.daemon")


def sd_notify(*lines: str) -> bool:
    """Send `KEY=value` lines to $NOTIFY_SOCKET; False when not run by systemd (or on error)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if none are wanted."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def ping_watchdog(interval: float) -> None:
    """Ping until cancelled."""
    # pinged from the event loop itself: a stalled loop stops the pings and systemd restarts us
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
