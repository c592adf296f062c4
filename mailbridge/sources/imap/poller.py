"""The IMAP poller of one watched folder of an `[[imap]]` account (SPEC sections 3, 4, 6).

A poller is a thin adapter onto `Ingestor.accept_many`: fetch new UIDs in batches with
`BODY.PEEK[]`, hand a batch to ingest (one commit), and only after that commit do the `after`
action on the server and advance the UIDVALIDITY+UID checkpoint. A crash in between re-fetches the
batch, which ingest recognises as duplicates (and they get their after-action then).

Each poller runs on its own thread (imapclient blocks; `pollers.ImapPollers` starts them) and
holds the folder's lease while it works, so in a cluster exactly one node polls a folder (see
`coordination`). Folder names in the config are resolved against the server's personal namespace
at every connection (`move:Processed` is `INBOX/Processed` on Cyrus).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailbridge import node
from mailbridge.envelope import Envelope, Source
from mailbridge.errors import ImapError, StorageUnavailable
from mailbridge.sources.imap.coordination import (
    Checkpoint,
    FolderLease,
    load_checkpoint,
    save_checkpoint,
)
from mailbridge.sources.imap.session import FolderMissing, ImapSession

if TYPE_CHECKING:
    from mailbridge.app import App
    from mailbridge.clock import Clock
    from mailbridge.config import ImapAccount

log = logging.getLogger("mailbridge.imap")

REIDLE = timedelta(minutes=25)  # servers may drop an IDLE after 30 minutes (RFC 2177)
RESCAN_MARGIN = timedelta(days=1)  # SEARCH SINCE has day granularity and server-local dates


class Backoff:
    """Capped exponential backoff with jitter, so many nodes do not retry in lockstep."""

    def __init__(self, initial: float = 1.0, cap: float = 300.0) -> None:
        self.initial, self.cap, self.failures = initial, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class FolderStatus:
    state: str = "starting"  # starting | active | standby | failing | stopped
    ok: bool = False
    last_success: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Watch:
    """One folder of one account: the support folder, or the agents' Sent folder."""

    account: ImapAccount
    folder: str
    sent: bool = False

    @property
    def label(self) -> str:
        return f"{self.account.name}/{self.folder}"

    @property
    def lease(self) -> str:
        return f"imap:{self.account.name}:{self.folder}"

    @property
    def source(self) -> Source:
        # Sent-folder mail was sent by an agent's own client: that is agent authority (SPEC 3)
        kind = "imap-sent" if self.sent else "imap"
        return Source(kind, self.account.name, live=True, agent_authority=self.sent)


def watches(account: ImapAccount) -> list[Watch]:
    found = [Watch(account, account.folder)]
    if account.sent_folder and account.sent_folder != account.folder:
        found.append(Watch(account, account.sent_folder, sent=True))
    return found


class FolderPoller:
    """Polls one folder until stopped: lease, connect, drain, wait (IDLE/poll), repeat."""

    def __init__(
        self,
        app: App,
        watch: Watch,
        node_id: str,
        lease_ttl: timedelta,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        incarnation: node.Incarnation | None = None,
    ) -> None:
        self.app, self.watch = app, watch
        self.account = watch.account
        self.clock = clock or app.clock
        self.backoff = backoff or Backoff()
        self.status = FolderStatus()
        self.stopping = threading.Event()
        self.envelope = Envelope(peer=f"{self.account.host}:{self.account.port}")
        incarnation = incarnation or node.current()
        self.lease = FolderLease(
            app.store, watch.lease, node_id, incarnation, lease_ttl, self.clock, watch.label
        )
        self._session: ImapSession | None = None
        self._failures = 0
        self._standby_logged: str | None = None
        self._move_to: str | None = None  # the after-action's folder as the server names it
        self._folder_notes: dict[str, str | None] = {}  # configured name -> last thing logged

    # --- thread body --------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self.lease.keep(force=True):
                    self._standby()
                    self.stopping.wait(self.lease.renew_every)
                    continue
                try:
                    self._serve()
                    continue  # stopped, or the lease was lost: the loop decides
                except (ImapError, StorageUnavailable) as exc:
                    self._failed(str(exc))
                except Exception as exc:  # a bug must not silently end polling of a mailbox
                    log.exception("imap %s: unexpected error", self.watch.label)
                    self._failed(f"{exc.__class__.__name__}: {exc}")
                self.stopping.wait(self.backoff.next())
        finally:
            self.lease.release()
            self.status.state = "stopped"

    def stop(self) -> None:
        self.stopping.set()

    def abort(self) -> None:
        """Break blocking socket I/O so a stop does not wait for a read timeout."""
        session = self._session
        if session is not None:
            session.abort()

    def poll_once(self) -> bool:
        """One pass without waiting: lease, connect, fetch all new mail, disconnect, release.

        False when another node holds the lease.
        """
        if not self.lease.keep(force=True):
            return False
        try:
            with self._connection() as session:
                self.drain(session)
            self._succeeded()
        finally:
            self.lease.release()
        return True

    # --- one connection -----------------------------------------------------------------

    def _serve(self) -> None:
        with self._connection() as session:
            if self._failures == 0:
                mode = "IDLE" if session.idle_supported and self.account.idle else "polling"
                self._say(logging.INFO, "connected to %s (%s)", self.envelope.peer, mode)
            wait = min(self.account.poll_interval, REIDLE).total_seconds()
            while not self.stopping.is_set():
                if not self.drain(session):
                    return
                self._succeeded()
                if session.wait(wait, self.stopping, self.lease.keep) in ("stop", "lease"):
                    return

    @contextmanager
    def _connection(self) -> Iterator[ImapSession]:
        session = ImapSession(self.account, self.watch.folder, readonly=self.watch.sent)
        self._session = session
        try:
            session.open()
            session.folder = self._spelled(self.watch.folder, session.find_folder)
            if self.account.after_action == "move" and not self.watch.sent:
                self._move_to = self._move_target(session)
            self.status.state = "active"
            yield session
        except BaseException:
            session.close(graceful=False)  # LOGOUT on a broken link could hang a read timeout
            raise
        else:
            session.close(graceful=True)
        finally:
            self._session = None

    def drain(self, session: ImapSession) -> bool:
        """Ingest everything new in the folder; False when the lease was lost on the way."""
        selected = session.select()
        checkpoint = load_checkpoint(self.app.store, self.account.name, self.watch.folder)
        last = checkpoint.last_uid if checkpoint else 0
        incremental = checkpoint is not None and checkpoint.uidvalidity == selected.uidvalidity
        uids = session.uids_after(last) if incremental else self._rescan(session, checkpoint)
        size = self.account.batch_size
        for batch in (uids[i : i + size] for i in range(0, len(uids), size)):
            if self.stopping.is_set():
                return True
            if not self.lease.keep():
                return False
            self._batch(session, batch)
            if incremental:
                self._save_checkpoint(selected.uidvalidity, batch[-1])
        # a finished pass has seen (or deliberately skipped) every UID below UIDNEXT; a rescan
        # saves only now, so one cut short is redone rather than continued past skipped history
        covered = max([(selected.uidnext or 1) - 1, *uids[-1:]])
        if not incremental or covered > last:
            self._save_checkpoint(selected.uidvalidity, covered)
        return True

    def _rescan(self, session: ImapSession, checkpoint: Checkpoint | None) -> list[int]:
        """What to fetch with no usable checkpoint: first pass, or the UIDVALIDITY changed."""
        if checkpoint:
            self._say(logging.WARNING, "UIDVALIDITY changed: rescanning (dedup skips known mail)")
        if self.watch.sent:
            # an agent's Sent folder holds years of unrelated mail: start from now, and after a
            # UIDVALIDITY change look back only to the last pass
            if checkpoint is None or checkpoint.saved_at is None:
                self._say(logging.INFO, "first pass: only mail sent from now on")
                return []
            return session.uids_since((checkpoint.saved_at - RESCAN_MARGIN).date())
        if self.account.after_action == "seen":
            # mail stays in the folder: what was already read before us is history, not tickets
            return session.search(["UNSEEN"])
        return session.search(["ALL"])  # move/delete: everything still here is unprocessed

    def _batch(self, session: ImapSession, uids: Sequence[int]) -> None:
        sizes = session.sizes(uids)
        limit = self.account.max_message_size
        fits = [uid for uid in uids if uid in sizes and sizes[uid] <= limit]
        raws = session.bodies(fits)
        fetched = [uid for uid in fits if uid in raws]
        source = self.watch.source
        outcomes = self.app.ingestor.accept_many(
            [(raws[u], self.envelope, source) for u in fetched]
        )
        for uid, outcome in zip(fetched, outcomes, strict=True):
            if outcome.outcome == "quarantined":
                self._say(logging.WARNING, "UID %d quarantined: %s", uid, outcome.reason)
        oversize = [uid for uid in uids if sizes.get(uid, 0) > limit]
        done = fetched + self._oversize(session, oversize)
        # only now, after the commit that holds them, may the server forget these messages
        if done:
            self._after(session, done)

    def _oversize(self, session: ImapSession, uids: list[int]) -> list[int]:
        limit = self.account.max_message_size
        quarantine = self.app.ingestor.quarantine_raw
        raws = session.bodies(uids)
        for raw in raws.values():
            quarantine(
                raw, self.envelope, self.watch.source, f"oversize: {len(raw)} > {limit} bytes"
            )
        return list(raws)

    def _after(self, session: ImapSession, uids: list[int]) -> None:
        if self.watch.sent:
            return  # never touch an agent's Sent mail: the checkpoint alone remembers it
        action = self.account.after_action
        if action == "seen":
            session.mark_seen(uids)
        elif action == "move":
            if self._move_to is not None:
                session.move(uids, self._move_to)
            # else the folder cannot be created (logged once): the mail stays, already ingested
        else:
            session.delete(uids)

    # --- folder names on this server -----------------------------------------------------

    def _spelled(self, folder: str, lookup: Callable[[str], str]) -> str:
        found = lookup(folder)
        if found != folder and self._folder_notes.get(folder) != found:
            self._say(logging.INFO, "folder %s is %s on this server", folder, found)
        self._folder_notes[folder] = found
        return found

    def _move_target(self, session: ImapSession) -> str | None:
        """The folder for `after = move:...`, or None (reported once) when it cannot exist."""
        wanted = self.account.after_folder or ""
        try:
            return self._spelled(wanted, session.ensure_folder)
        except FolderMissing as exc:
            problem = str(exc)
            if self._folder_notes.get(wanted) != problem:
                self._say(
                    logging.WARNING,
                    "%s; after = move:%s leaves ingested mail in %s until that folder exists",
                    problem,
                    wanted,
                    session.folder,
                )
            self._folder_notes[wanted] = problem
            return None

    def _save_checkpoint(self, uidvalidity: int, last_uid: int) -> None:
        save_checkpoint(
            self.app.store,
            self.account.name,
            self.watch.folder,
            uidvalidity,
            last_uid,
            self.clock(),
        )

    # --- state changes, logged once each ------------------------------------------------

    def _standby(self) -> None:
        self.status.state, self.status.ok = "standby", True
        owner = self.lease.holder()
        if owner != self._standby_logged:
            self._say(logging.INFO, "standby: lease held by %s", owner)
            self._standby_logged = owner

    def _succeeded(self) -> None:
        if self._failures:
            self._say(logging.INFO, "recovered after %d failed attempts", self._failures)
        self._failures = 0
        self._standby_logged = None
        self.backoff.reset()
        self.status.state, self.status.ok = "active", True
        self.status.last_success, self.status.last_error = self.clock(), None
        if self.app.metrics is not None:
            self.app.metrics.poller_success(self.account.name, self.status.last_success)

    def _failed(self, reason: str) -> None:
        if self._failures == 0 or reason != self.status.last_error:
            self._say(logging.WARNING, "failing: %s (retrying with backoff)", reason)
        self._failures += 1
        self.status.state, self.status.ok, self.status.last_error = "failing", False, reason
        if self.app.metrics is not None:
            self.app.metrics.poller_error(self.account.name)

    def _say(self, level: int, message: str, *args: object) -> None:
        log.log(level, "imap %s: " + message, self.watch.label, *args)
