"""The IMAP source as a daemon component: one polling thread per watched folder of every account.

Built from an `ImapConfig` in the composition root; on reload only the accounts whose settings
changed are restarted (all of them when the cluster's node id or lease ttl changed), each only
after its old threads have stopped and released their leases.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mailbridge import node
from mailbridge.sources.imap.poller import Backoff, FolderPoller, watches

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.clock import Clock
    from mailbridge.config import ImapAccount, Settings

STOP_GRACE = 2.0  # seconds a poller gets to notice the stop flag before its socket is shut


@dataclass(frozen=True)
class ImapConfig:
    """What the pollers read from settings, built once per (re)load."""

    accounts: tuple[ImapAccount, ...]
    node_id: str | None  # configured; None: the host name (mailbridge.node)
    lease_ttl: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> ImapConfig:
        return cls(settings.imap, settings.cluster.node_id, settings.cluster.lease_ttl)


def _resolve(done: asyncio.Future[None]) -> None:
    """Settle a poller's future from the loop thread, unless it is settled already."""
    if not done.done():
        done.set_result(None)


@dataclass
class _Running:
    poller: FolderPoller
    done: asyncio.Future[None]


class ImapPollers:
    """The daemon component: one polling thread per watched folder of every `[[imap]]` account."""

    name = "imap"

    def __init__(
        self,
        app: App,
        config: ImapConfig,
        *,
        clock: Clock | None = None,
        node_id: str | None = None,
        backoff: tuple[float, float] = (1.0, 300.0),
        incarnation: node.Incarnation | None = None,
    ) -> None:
        self.app, self.config = app, config
        self.clock = clock
        self._node_id = node_id  # an explicit id survives reloads
        self.node_id = node_id or node.default_node_id(config.node_id)
        self.backoff = backoff
        self.incarnation = incarnation or node.current()
        self._running: dict[str, list[_Running]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for account in self.config.accounts:
            self._launch(account)

    async def stop(self) -> None:
        self._closing = True
        runs = [run for group in self._running.values() for run in group]
        self._running = {}
        await self._join(runs)
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def reload(self, settings: Settings) -> None:
        """Restart only the accounts whose settings changed; the others keep polling."""
        old, config = self.config, ImapConfig.from_settings(settings)
        self.config = config
        if self._loop is None or self._closing:
            return
        wanted = {account.name: account for account in config.accounts}
        restart_all = (config.node_id, config.lease_ttl) != (old.node_id, old.lease_ttl)
        if restart_all:
            self.node_id = self._node_id or node.default_node_id(config.node_id)
        replacing: set[str] = set()
        for name, group in list(self._running.items()):
            if restart_all or wanted.get(name) != group[0].poller.account:
                del self._running[name]
                replacing.add(name)
                task = self._loop.create_task(self._replace(group, wanted.get(name)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for name, account in wanted.items():
            if name not in self._running and name not in replacing:
                self._launch(account)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per account: {"ok", "last_success", "last_error", "folders": {folder: state}}."""
        found: dict[str, dict[str, Any]] = {}
        for name, group in self._running.items():
            states = [run.poller.status for run in group]
            successes = [s.last_success for s in states if s.last_success is not None]
            found[name] = {
                "ok": all(s.ok for s in states),
                # the account is as fresh as its stalest folder
                "last_success": min(successes) if len(successes) == len(states) else None,
                "last_error": next((s.last_error for s in states if s.last_error), None),
                "folders": {run.poller.watch.folder: run.poller.status.state for run in group},
            }
        return found

    def pollers(self) -> list[FolderPoller]:
        return [run.poller for group in self._running.values() for run in group]

    # --- threads ------------------------------------------------------------------------

    def _launch(self, account: ImapAccount) -> None:
        assert self._loop is not None
        group = self._running.setdefault(account.name, [])
        for watch in watches(account):
            poller = FolderPoller(
                self.app,
                watch,
                self.node_id,
                self.config.lease_ttl,
                self.clock,
                Backoff(*self.backoff),
                self.incarnation,
            )
            done: asyncio.Future[None] = self._loop.create_future()
            thread = threading.Thread(
                target=self._body, args=(poller, done), name=f"imap:{watch.label}", daemon=True
            )
            group.append(_Running(poller, done))
            thread.start()

    def _body(self, poller: FolderPoller, done: asyncio.Future[None]) -> None:
        try:
            poller.run()
        finally:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, done)

    async def _join(self, runs: list[_Running]) -> None:
        for run in runs:
            run.poller.stop()
        if not runs:
            return
        _, pending = await asyncio.wait([run.done for run in runs], timeout=STOP_GRACE)
        stuck = [run for run in runs if run.done in pending]
        for run in stuck:  # blocked in a socket read: cut it short
            run.poller.abort()
        if stuck:
            await asyncio.wait([run.done for run in stuck], timeout=STOP_GRACE)

    async def _replace(self, group: list[_Running], account: ImapAccount | None) -> None:
        # the old threads must be gone (and their lease released) before new ones start
        await self._join(group)
        if account is not None and not self._closing and account.name not in self._running:
            self._launch(account)
