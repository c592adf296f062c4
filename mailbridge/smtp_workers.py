"""`[smtp] workers`: listener processes 2..N on the same port, started and watched by the main one.

Each worker runs `daemon.run_smtp_worker`, its own composition root; this module only spawns,
supervises and signals them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailbridge.errors import ConfigError
from mailbridge.sources.smtp.listener import SHUTDOWN_GRACE

if TYPE_CHECKING:
    from mailbridge.config import Settings

# the daemon's logger: operators filter the journal by it
log = logging.getLogger("mailbridge.daemon")

_WORKER_CODE = (
    "import sys; from mailbridge.daemon import run_smtp_worker; "
    "sys.exit(run_smtp_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))"
)
WORKER_READY_TIMEOUT = 60.0
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def _die_with_parent() -> None:
    # a worker outliving a killed main process would keep the port and take mail nobody sees
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    config_path: Path  # each worker reads the file itself, as the main process does
    count: int  # listener processes in all, the main one included

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkersConfig:
        if settings.source_path is None:
            raise ConfigError(["smtp.workers: workers > 1 needs a config file for the workers"])
        return cls(settings.source_path, settings.smtp.workers)


class SmtpWorkers:
    """Listener processes 2..N of `[smtp] workers`: each its own interpreter (so its own GIL), its
    own store and committers, on the same port via SO_REUSEPORT; the kernel spreads connections.

    They run the listener only: the outbox, sweeps, IMAP and metrics stay in this main process,
    whose sender picks up their tickets' acknowledgements at its next poll. SIGHUP and SIGTERM are
    passed on; a worker that dies is started again (mail it acknowledged is committed already).
    """

    name = "smtp-workers"

    def __init__(self, config: WorkersConfig) -> None:
        self.config_path = config.config_path
        self.count = config.count
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        waits = [self._spawn(index) for index in range(2, self.count + 1)]
        for index, read_fd in waits:
            ok = await asyncio.to_thread(_wait_ready, read_fd, WORKER_READY_TIMEOUT)
            if not ok:
                raise OSError(f"smtp worker {index} did not start listening")
        self._watch = asyncio.create_task(self._supervise())

    def _spawn(self, index: int) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        try:
            argv = [sys.executable, "-c", _WORKER_CODE, str(self.config_path), str(index)]
            proc = subprocess.Popen(
                [*argv, str(write_fd)], env=env, pass_fds=(write_fd,), preexec_fn=_die_with_parent
            )
        finally:
            os.close(write_fd)
        self.procs[index] = proc
        log.info("smtp worker %d started (pid %d)", index, proc.pid)
        return index, read_fd

    async def _supervise(self) -> None:
        while not self.stopping:
            await asyncio.sleep(RESTART_DELAY)
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                log.error(
                    "smtp worker %d (pid %d) exited with %s: restarting", index, proc.pid, code
                )
                _, read_fd = self._spawn(index)
                os.close(read_fd)  # it listens once started; nobody needs to wait for that here

    async def stop(self) -> None:
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for index, proc in self.procs.items():
            try:
                await asyncio.to_thread(proc.wait, SHUTDOWN_GRACE + 10)
            except subprocess.TimeoutExpired:
                log.warning("smtp worker %d (pid %d) did not stop: killing it", index, proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)

    def reload(self, settings: Settings) -> None:
        for proc in self.procs.values():  # each re-reads the file, as this process does
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)


def _wait_ready(read_fd: int, timeout: float) -> bool:
    import select

    try:
        readable, _, _ = select.select([read_fd], [], [], timeout)
        return bool(readable) and os.read(read_fd, 1) == b"1"
    finally:
        os.close(read_fd)
