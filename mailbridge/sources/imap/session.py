"""One IMAP connection with one folder selected: the only module that talks imapclient.

Every library error is wrapped here, where it enters, as `ImapError`; the poller above sees
nothing else. All calls block: the poller runs them on its own thread, never on the event loop.
"""

from __future__ import annotations

import imaplib
import logging
import re
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
from mailbridge.sources.imap.folders import Namespace, folder_spellings, same_folder

if TYPE_CHECKING:
    from mailbridge.config import ImapAccount

log = logging.getLogger("mailbridge.imap")

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0  # a FETCH of a large message may take a while on a slow link
IDLE_TICK = 0.5  # how often a waiting IDLE looks at the stop flag and the lease
TOKEN_TIMEOUT = 30.0
Wake = Literal["mail", "timeout", "stop", "lease"]
LISTED_FOLDERS = 40  # how many of the server's folders an error message names


class FolderMissing(ImapError):
    """A configured folder exists under no spelling and cannot be created: a setup problem that
    reconnecting does not fix, unlike the other `ImapError`s."""


def _text(value: str | bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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
        self.namespace = Namespace("", None)
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
        self.namespace = self._personal_namespace()
        return self

    def _personal_namespace(self) -> Namespace:
        client = self.client_
        with wrapped(self.name, "namespace"):
            if client.has_capability("NAMESPACE"):
                personal = client.namespace().personal or ()
                if personal:  # the first one is where new folders go (RFC 2342 section 5)
                    prefix, separator = personal[0]
                    return Namespace(_text(prefix) or "", _text(separator) or None)
            # without NAMESPACE, LIST "" "" still names the separator (RFC 3501 6.3.8)
            listed = client.list_folders("", "")
        return Namespace("", _text(listed[0][1]) or None if listed else None)

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

    # --- folder names -------------------------------------------------------------------

    def resolve(self, folder: str) -> str | None:
        """The server's name for a configured folder, or None when no spelling of it exists."""
        for spelling in folder_spellings(folder, self.namespace):
            with wrapped(self.name, f"list {spelling}"):
                listed = self.client_.list_folders("", spelling)
            for flags, _sep, name in listed:
                unusable = {str(_text(f)).lower() for f in flags} & {"\\noselect", "\\nonexistent"}
                if same_folder(name, spelling) and not unusable:
                    return spelling
        return None

    def find_folder(self, folder: str) -> str:
        """The server's name for a folder that must already exist (the watched or Sent folder)."""
        found = self.resolve(folder)
        if found is None:
            tried = ", ".join(folder_spellings(folder, self.namespace))
            raise FolderMissing(
                f"{self.name}: folder {folder} not found (tried {tried}); {self.folder_list()}"
            )
        return found

    def ensure_folder(self, folder: str) -> str:
        """The server's name for `folder`, created where new folders belong if it is missing."""
        found = self.resolve(folder)
        if found is not None:
            return found
        target = folder_spellings(folder, self.namespace)[-1]
        try:
            self.client_.create_folder(target)
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:  # the link, not the name
            raise ImapError(f"{self.name}: create {target}: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            if (found := self.resolve(folder)) is not None:
                return found  # created meanwhile by someone else
            said = str(exc).strip().removeprefix("create failed: ")
            raise FolderMissing(
                f"{self.name}: cannot create folder {target} (server said: {said}); "
                f"{self.folder_list()}"
            ) from exc
        log.info("imap %s: created folder %s for the move after-action", self.name, target)
        return target

    def folder_list(self) -> str:
        """The server's folders, for an error message that lets an operator pick the right one."""
        try:
            with wrapped(self.name, "list folders"):
                names = sorted(name for _flags, _sep, name in self.client_.list_folders())
        except ImapError as exc:
            return f"the folder list is unavailable ({exc})"
        more = f" and {len(names) - LISTED_FOLDERS} more" if len(names) > LISTED_FOLDERS else ""
        return f"the server has: {', '.join(names[:LISTED_FOLDERS])}{more}"

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
            if any(_NEW_MAIL.match(line) for line in _already_read(client)):
                wake, deadline = "mail", 0.0
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


_NEW_MAIL = re.compile(rb"\* \d+ (EXISTS|RECENT)\b", re.IGNORECASE)


def _already_read(client: IMAPClient) -> list[bytes]:
    """Complete lines imaplib has already buffered after IDLE's `+` continuation.

    Mail that arrives between the last SEARCH and IDLE is announced (`* n EXISTS`) in the same
    packet as `+ idling`. `idle_check` only polls the socket, so it would not see that buffered
    line until more data came, and the mail would wait for the next re-IDLE.
    """
    imap = client._imap
    sock = client.socket()
    lines: list[bytes] = []
    sock.setblocking(False)  # peek() reads the socket only when the buffer is empty: never wait
    try:
        while b"\n" in (imap.file.peek() or b""):
            lines.append(imap._get_line())
    except OSError:
        pass  # nothing more to read now; idle_check takes it from here
    finally:
        sock.setblocking(True)
        client._set_read_timeout()
    return lines
