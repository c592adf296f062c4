"""One IMAP connection with one folder selected: the only module that talks imapclient.

Every library error is wrapped here, where it enters, as `ImapError`; the poller above sees
nothing else. All calls block: the poller runs them on its own thread, never on the event loop.
"""

from __future__ import annotations

import imaplib
import logging
import shlex
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from imapclient import SEEN, IMAPClient, SocketTimeout

from mailbridge.errors import ImapError

if TYPE_CHECKING:
    from mailbridge.config import ImapAccount

log = logging.getLogger("mailbridge.imap")

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0  # a FETCH of a large message may take a while on a slow link
IDLE_TICK = 0.5  # how often a waiting IDLE looks at the stop flag and the lease
TOKEN_TIMEOUT = 30.0
Wake = Literal["mail", "timeout", "stop", "lease"]


@dataclass(frozen=True, slots=True)
class Selected:
    uidvalidity: int
    uidnext: int | None  # None when the server does not say (RFC 3501 requires it; be lenient)


@contextmanager
def wrapped(account: str, what: str) -> Iterator[None]:
    """Turn any imapclient/socket/TLS error into ImapError naming the account and the step."""
    try:
        yield
    except ImapError:
        raise
    except (imaplib.IMAP4.error, OSError, EOFError, ValueError) as exc:
        reason = str(exc).strip() or exc.__class__.__name__
        raise ImapError(f"{account}: {what}: {reason}") from exc


def tls_context(account: ImapAccount) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(account.ca_file) if account.ca_file else None)
    if not account.verify_tls:
        # an explicit opt-out for a self-signed test server; never the default
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def oauth2_token(account: ImapAccount) -> str:
    """Run the configured command (no shell) and take its stdout as the access token.

    Run at every login, so an expired token is replaced simply by reconnecting.
    """
    command = account.oauth2_token_command or ""
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, timeout=TOKEN_TIMEOUT, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ImapError(f"{account.name}: oauth2_token_command failed: {exc}") from exc
    token = done.stdout.decode("utf-8", "replace").strip()
    if done.returncode != 0 or not token:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        why = f"exit {done.returncode}" + (f": {detail[0]}" if detail else "")
        raise ImapError(f"{account.name}: oauth2_token_command printed no token ({why})")
    return token


class ImapSession:
    """A logged-in connection to one account, with one folder selected."""

    def __init__(self, account: ImapAccount, folder: str, readonly: bool) -> None:
        self.account = account
        self.folder = folder
        self.readonly = readonly
        self.name = account.name
        self.client: IMAPClient | None = None
        self.idle_supported = False
        self.has_move = False
        self.has_uidplus = False
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------

    def open(self) -> ImapSession:
        account = self.account
        with wrapped(self.name, f"connect to {account.host}:{account.port}"):
            timeout = SocketTimeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
            implicit = account.tls == "implicit"
            ctx = tls_context(account) if account.tls != "none" else None
            client = IMAPClient(
                account.host, account.port, ssl=implicit, ssl_context=ctx, timeout=timeout
            )
            with self._lock:
                self.client = client
            if account.tls == "starttls":
                # never fall back to plaintext: a stripped STARTTLS is an attack, not a quirk
                if not client.has_capability("STARTTLS"):
                    raise ImapError(f"{self.name}: server does not offer STARTTLS")
                client.starttls(ctx)
        self._login()
        with wrapped(self.name, "capabilities"):
            self.idle_supported = self.client_.has_capability("IDLE")
            self.has_move = self.client_.has_capability("MOVE")
            self.has_uidplus = self.client_.has_capability("UIDPLUS")
        return self

    def _login(self) -> None:
        account = self.account
        with wrapped(self.name, f"login as {account.username}"):
            if account.oauth2_token_command:
                self.client_.oauth2_login(account.username, oauth2_token(account))
            elif account.password is not None:
                self.client_.login(account.username, account.password.get())
            else:  # config guarantees one of the two; keep the message clear if it ever does not
                raise ImapError(f"{self.name}: no password or oauth2_token_command configured")

    @property
    def client_(self) -> IMAPClient:
        if self.client is None:
            raise ImapError(f"{self.name}: not connected")
        return self.client

    def close(self, graceful: bool = True) -> None:
        """LOGOUT (graceful) or just drop the socket (after an error: LOGOUT might hang)."""
        with self._lock:
            client, self.client = self.client, None
        if client is None:
            return
        if graceful:
            try:
                client.logout()
                return
            except Exception:  # the connection may already be gone; closing must not fail
                pass
        with suppress(Exception):
            client.shutdown()

    def abort(self) -> None:
        """Break a blocking read from another thread (prompt stop): shut the socket down."""
        with self._lock:
            client = self.client
        if client is not None:
            with suppress(Exception):
                client.shutdown()

    # --- reading ------------------------------------------------------------------------

    def select(self) -> Selected:
        with wrapped(self.name, f"select {self.folder}"):
            info = self.client_.select_folder(self.folder, readonly=self.readonly)
        uidnext = info.get(b"UIDNEXT")
        return Selected(int(info[b"UIDVALIDITY"]), int(uidnext) if uidnext else None)

    def uids_after(self, last_uid: int) -> list[int]:
        # `UID n:*` always matches the highest message, even when it is below n: filter
        with wrapped(self.name, "search"):
            found = self.client_.search(["UID", f"{last_uid + 1}:*"])
        return sorted(uid for uid in found if uid > last_uid)

    def search(self, criteria: Sequence[Any]) -> list[int]:
        with wrapped(self.name, "search"):
            return sorted(self.client_.search(list(criteria)))

    def uids_since(self, day: date) -> list[int]:
        return self.search(["SINCE", day])

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        with wrapped(self.name, "fetch sizes"):
            found = self.client_.fetch(list(uids), ["RFC822.SIZE"])
        return {uid: int(data.get(b"RFC822.SIZE", 0)) for uid, data in found.items()}

    def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """Raw bytes by UID; PEEK so nothing is marked read before it is committed."""
        if not uids:
            return {}
        with wrapped(self.name, "fetch"):
            found = self.client_.fetch(list(uids), ["BODY.PEEK[]"])
        # a message expunged meanwhile is simply absent; the next pass will not see it either
        return {uid: bytes(data[b"BODY[]"]) for uid, data in found.items() if b"BODY[]" in data}

    # --- after-actions (only ever called after the commit that holds the messages) ------

    def mark_seen(self, uids: Sequence[int]) -> None:
        with wrapped(self.name, "set \\Seen"):
            self.client_.add_flags(list(uids), [SEEN], silent=True)

    def move(self, uids: Sequence[int], folder: str) -> None:
        with wrapped(self.name, f"move to {folder}"):
            if self.has_move:
                self.client_.move(list(uids), folder)
                return
            self.client_.copy(list(uids), folder)
        self.delete(uids)

    def delete(self, uids: Sequence[int]) -> None:
        with wrapped(self.name, "delete"):
            self.client_.delete_messages(list(uids), silent=True)
            if self.has_uidplus:
                self.client_.uid_expunge(list(uids))
            else:
                # without UIDPLUS, EXPUNGE also removes mail others flagged \Deleted here
                self.client_.expunge()

    def ensure_folder(self, folder: str) -> None:
        with wrapped(self.name, f"create {folder}"):
            if not self.client_.folder_exists(folder):
                log.info("imap %s: creating folder %s for the move after-action", self.name, folder)
                self.client_.create_folder(folder)

    # --- waiting for new mail -----------------------------------------------------------

    def wait(self, seconds: float, stop: threading.Event, keep: Callable[[], bool]) -> Wake:
        """Wait for new mail (IDLE if possible) at most `seconds`; `keep()` renews the lease."""
        if self.idle_supported and self.account.idle:
            return self._idle(seconds, stop, keep)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop.wait(IDLE_TICK):
                return "stop"
            if not keep():
                return "lease"
        return "timeout"

    def _idle(self, seconds: float, stop: threading.Event, keep: Callable[[], bool]) -> Wake:
        client = self.client_
        deadline = time.monotonic() + seconds
        wake: Wake = "timeout"
        with wrapped(self.name, "IDLE"):
            client.idle()
            silent_eofs = 0
            while time.monotonic() < deadline:
                if stop.is_set():
                    wake = "stop"
                    break
                if not keep():
                    wake = "lease"
                    break
                started = time.monotonic()
                responses = client.idle_check(timeout=IDLE_TICK)
                if any(r and r[0] == b"BYE" for r in responses):
                    raise ImapError(f"{self.name}: server closed the connection (BYE)")
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    wake = "mail"
                    break
                # imapclient swallows EOF in idle_check and returns at once, empty: notice it
                quick = not responses and time.monotonic() - started < IDLE_TICK / 2
                silent_eofs = silent_eofs + 1 if quick else 0
                if silent_eofs >= 3:
                    raise ImapError(f"{self.name}: connection lost during IDLE")
            client.idle_done()
        return wake
