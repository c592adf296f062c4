"""A private Dovecot IMAP server for benchmarks and tests.

`DovecotServer` is a plain context manager. Each instance has its own config, users, Maildir and
runtime dirs under a temp dir and listens on 127.0.0.1 only, so several run beside the system's
own Dovecot. The pytest fixtures around it (`dovecot`, `dovecot_factory`) are in
tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from imapclient import IMAPClient

from bench.servers.ports import free_port

MAIL_UID = 65534  # nobody: Dovecot refuses to keep mail for uid 0
USER = "support@example.com"
PASSWORD = "secret"

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mb-dovecot-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
first_valid_uid = {uid}
default_login_user = {login_user}
default_internal_user = {internal_user}
mail_location = maildir:~/Maildir
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = {separator}
  prefix = {prefix}
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Processed {{
    auto = create
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
# no growing delay after failed logins: tests fail logins on purpose
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)), None
    )


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


class DovecotServer:
    """One private Dovecot; `start()` / `stop()` may be repeated, the port and mail stay."""

    def __init__(
        self,
        users: Iterable[tuple[str, str]] = ((USER, PASSWORD),),
        tls: bool = False,
        separator: str = "/",
        prefix: str = "",
    ) -> None:
        """`separator` and `prefix` shape the personal namespace: `prefix="INBOX/"` (or
        `"INBOX."` with `separator="."`) presents every folder below INBOX, as Cyrus and Courier
        do, so `Sent` is `INBOX/Sent` there."""
        binary = dovecot_binary()
        if binary is None:
            raise FileNotFoundError("dovecot binary not found (apt-get install dovecot-imapd)")
        self.binary = binary
        # not under pytest's tmp dir: pytest resets its root to 0700 whenever a session starts,
        # and Dovecot's unprivileged auth process must traverse every directory to the users file
        self.root = Path(tempfile.mkdtemp(prefix="mb-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0  # implicit TLS; `port` then offers STARTTLS
        self.ca_file: Path | None = self._make_certificate() if tls else None
        self.users = dict(users)
        self.separator, self.prefix = separator, prefix
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    # --- lifecycle ----------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in self.users.items())
        )
        self.config = self.root / "dovecot.conf"
        self.config.write_text(
            _CONFIG.format(
                root=self.root,
                port=self.port,
                tls_port=self.tls_port,
                ssl=self._ssl_settings(),
                separator=self.separator,
                prefix=self.prefix,
                **_identity(),
            )
        )
        os.chown(self.root / "home", MAIL_UID, MAIL_UID)

    def _make_certificate(self) -> Path:
        """A self-signed certificate for 127.0.0.1; it is its own CA for `ca_file`."""
        from bench.servers.certs import self_signed

        cert, _key = self_signed(self.root, "127.0.0.1")
        return cert

    def _ssl_settings(self) -> str:
        if self.ca_file is None:
            return "ssl = no"
        return f"ssl = yes\nssl_cert = <{self.ca_file}\nssl_key = <{self.root / 'cert.key'}"

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            return
        with (self.root / "dovecot.stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, so stop() can end stragglers
            )
        deadline = time.monotonic() + timeout
        while not _port_answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # imap processes outlive the master by up to 10 s before saying BYE; a server that goes
        # away takes its connections with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        # the master closes its listener before its children exit; wait until the port is free
        deadline = time.monotonic() + timeout
        while _port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for name in ("dovecot.log", "dovecot.stderr"):
            path = self.root / name
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    # --- helpers for tests: talk IMAP to it as a mail client would ------------------------

    def client(self, user: str = USER) -> IMAPClient:
        client = IMAPClient(self.host, self.port, ssl=False, timeout=10)
        client.login(user, self.users[user])
        return client

    def append(
        self, raw: bytes, folder: str = "INBOX", flags: Iterable[bytes] = (), user: str = USER
    ) -> int:
        """APPEND one message; returns its UID (Dovecot answers APPENDUID)."""
        with self.client(user) as client:
            response = client.append(folder, raw, flags=tuple(flags))
        return _appended_uids(response)[-1]

    def append_many(
        self, messages: Iterable[bytes], folder: str = "INBOX", user: str = USER
    ) -> None:
        """MULTIAPPEND in chunks over one connection (fast enough for thousands)."""
        chunk: list[bytes] = []
        with self.client(user) as client:
            for raw in messages:
                chunk.append(raw)
                if len(chunk) == 500:
                    client.multiappend(folder, chunk)
                    chunk = []
            if chunk:
                client.multiappend(folder, chunk)

    def messages(self, folder: str = "INBOX", user: str = USER) -> dict[int, set[str]]:
        """UID -> flags (as str) of every message in `folder`."""
        with self.client(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            found = client.fetch(uids, ["FLAGS"]) if uids else {}
        return {
            uid: {f.decode() if isinstance(f, bytes) else str(f) for f in data[b"FLAGS"]}
            for uid, data in found.items()
        }

    def uidvalidity(self, folder: str = "INBOX", user: str = USER) -> int:
        with self.client(user) as client:
            return int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def folders(self, user: str = USER) -> list[str]:
        """Every folder's name as the server presents it (LIST "" "*")."""
        with self.client(user) as client:
            return sorted(name for _flags, _sep, name in client.list_folders())

    def recreate_folder(self, folder: str, user: str = USER) -> None:
        """Delete and recreate a folder: its UIDVALIDITY changes and its mail is gone."""
        with self.client(user) as client:
            client.delete_folder(folder)
            client.create_folder(folder)


def _appended_uids(response: bytes) -> list[int]:
    # b"[APPENDUID 1700000000 5] Append completed."
    text = response.decode() if isinstance(response, bytes) else str(response)
    if "APPENDUID" not in text:
        return [0]
    spec = text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1]
    uids: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition(":")
        uids += range(int(low), int(high or low) + 1)
    return uids


def _identity() -> dict[str, str | int]:
    # mail must not belong to uid 0, so it is kept as `nobody`; helpers run as dovenull
    login = "dovenull" if _user_exists("dovenull") else "nobody"
    return {"uid": MAIL_UID, "gid": MAIL_UID, "login_user": login, "internal_user": login}


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def missing_reason() -> str | None:
    """Why a private Dovecot cannot run here, or None when it can."""
    if dovecot_binary() is None:
        return "needs the dovecot binary (apt-get install dovecot-imapd)"
    if os.getuid() != 0:
        return "needs root to start a private Dovecot (it switches to its mail and login users)"
    return None
