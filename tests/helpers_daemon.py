"""Run the daemon for tests: in-process (a thread with its own event loop) or as `mailbridge run`.

Servers bind 127.0.0.1 on a free port. `mailbridge run` reports readiness over a private
$NOTIFY_SOCKET, exactly as it does to systemd, so tests wait for READY=1 instead of polling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.configs import AGENTS, mailbridge_toml
from tests.env import REPO

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.config import Settings


def write_config(path: Path, url: str, listen: str, smtp: str = "", extra: str = "") -> Path:
    """The config `mailbridge run` gets in tests: listening on `listen`, no new-ticket limit to
    speak of, agents' Authentication-Results believed from nobody, logging at info."""
    text = mailbridge_toml(
        url,
        listen=listen,
        smtp=smtp,
        agents=AGENTS,
        tickets="max_new_per_sender_per_hour = 100000\n",
        log='level = "info"\n',
        extra=extra,
    )
    path.write_text(text)
    return path


def settings_from(path: Path) -> Settings:
    from mailbridge.config import load_settings

    return load_settings(path)


def make_cert(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1/localhost, written as PEM files."""
    from bench.servers.certs import self_signed

    return self_signed(directory, name)


class InProcessDaemon:
    """`serve()` on a thread with its own event loop; `with InProcessDaemon(settings) as d: ...`."""

    def __init__(self, settings: Settings, app: App | None = None, timeout: float = 15.0) -> None:
        self.settings = settings
        self.app = app
        self.timeout = timeout
        self.daemon: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, name="mailbridge-test-daemon", daemon=True
        )

    def _run(self) -> None:
        from mailbridge.daemon import serve

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, stop_event=self._stop, app=self.app, on_ready=self._on_ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _on_ready(self, daemon: Any) -> None:
        self.daemon = daemon
        self._ready.set()

    def __enter__(self) -> InProcessDaemon:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError("daemon did not become ready")
        if self.error is not None:
            raise self.error
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the daemon's event loop and return its result."""
        assert self.loop is not None

        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(self.timeout)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout + 30)
        if self._thread.is_alive():
            raise TimeoutError("daemon did not stop")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.error is not None and exc[0] is None:
            raise self.error


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
        if self.sock.fileno() < 0:  # closed: only what was read before counts
            return any(line in m.split("\n") for m in self.messages)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line in m.split("\n") for m in self.messages):
                return True
            if not alive():
                return False
            self.sock.settimeout(0.1)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return any(line in m.split("\n") for m in self.messages)

    def drain(self) -> None:
        """Read whatever is queued without waiting (the sender may have exited)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.drain()
        self.sock.close()


class DaemonProcess:
    """`mailbridge run` as a subprocess; stderr goes to a file the test can read."""

    def __init__(
        self,
        workdir: Path,
        config: Path | None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.notify = NotifySocket(workdir)
        self.log_path = workdir / "daemon.log"
        environ = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
        environ.update({"NOTIFY_SOCKET": str(self.notify.path), "PYTHONPATH": str(REPO)})
        environ.update(env or {})
        argv = [sys.executable, "-m", "mailbridge"]
        if config is not None:
            argv += ["--config", str(config)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*argv, "run"], cwd=workdir, env=environ, stdout=self._log, stderr=subprocess.STDOUT
        )
        if not self.notify.wait_for("READY=1", timeout, alive=lambda: self.proc.poll() is None):
            self.kill()
            raise RuntimeError(f"mailbridge run did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()
            self.notify.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.notify.close()
