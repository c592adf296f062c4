"""What the database holds for one watched folder: its lease and its checkpoint.

The lease `imap:<account>:<folder>` lets exactly one node of a cluster poll a folder; another
takes over when that node stops renewing it, and the same node restarted after a crash takes it
back at once (see `mailbridge.node`). The checkpoint (UIDVALIDITY and the last UID ingested) is
where the next pass continues, on whichever node runs it. Both keep the configured folder name,
so they do not change when the server's folder layout does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailbridge import node
from mailbridge.errors import StorageUnavailable
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.clock import Clock
    from mailbridge.storage import Store

log = logging.getLogger("mailbridge.imap")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int
    saved_at: datetime | None


def load_checkpoint(store: Store, account: str, folder: str) -> Checkpoint | None:
    with store.unit() as session:
        row = repo.imap_checkpoint(session, account, folder)
        if row is None:
            return None
        return Checkpoint(row.uidvalidity, row.last_uid, row.last_success_at)


def save_checkpoint(
    store: Store, account: str, folder: str, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    with store.unit() as session:
        repo.save_imap_checkpoint(session, account, folder, uidvalidity, last_uid, now)


class FolderLease:
    """One folder's lease as this node's process holds it: taken, renewed every ttl/3, released."""

    def __init__(
        self,
        store: Store,
        name: str,
        node_id: str,
        incarnation: node.Incarnation,
        ttl: timedelta,
        clock: Clock,
        label: str,
    ) -> None:
        self.store, self.name, self.node_id = store, name, node_id
        self.incarnation = incarnation
        self.ttl = ttl
        self.clock = clock
        self.label = label  # account/folder, for log lines
        self.holding = False
        self._next_renewal = 0.0

    @property
    def renew_every(self) -> float:
        return max(self.ttl.total_seconds() / 3, 0.1)

    def keep(self, force: bool = False) -> bool:
        """Take or renew the lease (every ttl/3); False when this node must not poll."""
        if self.holding and not force and time.monotonic() < self._next_renewal:
            return True
        reclaimed: list[node.Incarnation] = []

        def gone(incarnation: str | None) -> bool:
            # only ever asked about an earlier process with this node's id
            earlier = node.Incarnation.parse(incarnation)
            if earlier is None or not earlier.is_gone():
                return False
            reclaimed.append(earlier)
            return True

        try:
            with self.store.unit() as session:
                held = repo.acquire_lease(
                    session,
                    self.name,
                    self.node_id,
                    self.clock(),
                    self.ttl,
                    incarnation=str(self.incarnation),
                    reclaim=gone,
                )
        except StorageUnavailable as exc:
            self._say(logging.WARNING, "cannot renew lease: %s", exc)
            held = False
        if held:
            self._next_renewal = time.monotonic() + self.renew_every
            if reclaimed:
                self._say(
                    logging.INFO,
                    "took the lease back from this node's earlier process (%s, no longer running)",
                    reclaimed[0].describe(),
                )
        elif self.holding:
            self._say(logging.WARNING, "lease lost: stopping polling on this node")
        self.holding = held
        return held

    def release(self) -> None:
        if not self.holding:
            return
        self.holding = False
        try:
            with self.store.unit() as session:
                repo.release_lease(session, self.name, self.node_id, str(self.incarnation))
        except StorageUnavailable as exc:  # it expires by itself; another node waits a ttl
            self._say(logging.WARNING, "cannot release lease: %s", exc)

    def holder(self) -> str:
        """Who holds the lease, for the standby line: a node id and, when known, its process."""
        try:
            with self.store.unit() as session:
                found = repo.lease_holder(session, self.name)
        except StorageUnavailable:
            found = None
        owner = found[0] if found else "nobody (database unavailable)"
        process = node.Incarnation.parse(found[1]) if found else None
        if process is not None:
            owner = f"{owner} ({process.describe()})"
        return owner

    def _say(self, level: int, message: str, *args: object) -> None:
        log.log(level, "imap %s: " + message, self.label, *args)
