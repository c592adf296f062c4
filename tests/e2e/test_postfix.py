"""`mailbridge run` in LMTP mode behind a real Postfix, configured as the README's recipe says.

A private Postfix (tests/postfix.py, Debian's master.cf with its chrooted `lmtp`)
relays example.com to mailbridge over TCP or over a Unix socket inside Postfix's queue directory.
Mail sent to Postfix with smtplib must become tickets, plus-token replies must thread, unknown
users must be refused by Postfix at RCPT, and mail that arrives while mailbridge is down must
wait in Postfix's queue and be delivered exactly once when it is back.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import smtplib
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.servers.ports import free_port
from mailbridge.cli import cli
from tests.helpers_daemon import (
    DaemonProcess,
    InProcessDaemon,
    settings_from,
    write_config,
)
from tests.mail import make_mail
from tests.postfix import PostfixServer

SUPPORT = "support@example.com"
CUSTOMER = "carol@customer.example"
LIMIT = 1024 * 1024  # mailbridge's max_message_size and Postfix's message_size_limit alike
SMALL_LIMIT = 64 * 1024


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def mail_of_size(size: int) -> bytes:
    """A message of exactly `size` bytes on the wire, in lines of 78 as a mail client writes."""
    lines = (size - len(crlf(make_mail(subject=f"{size} bytes", body=""))) - 2) // 78
    raw = crlf(make_mail(subject=f"{size} bytes", body=("x" * 76 + "\n") * lines))
    return raw + b"y" * (size - len(raw) - 2) + b"\r\n"


class Bridge:
    """`mailbridge run` on one config and database, stopped and started like a service."""

    def __init__(self, root: Path, listen: str, smtp: str) -> None:
        self.root = root
        self.config = write_config(
            root / "mailbridge.toml", f"sqlite:///{root}/mailbridge.db", listen, smtp
        )
        self.runs = 0
        self.process: DaemonProcess | None = None

    def start(self) -> None:
        self.runs += 1
        workdir = self.root / f"run{self.runs}"  # each run its own notify socket and log
        workdir.mkdir()
        self.process = DaemonProcess(workdir, self.config)

    def stop(self) -> None:
        assert self.process is not None
        assert self.process.terminate() == 0, self.process.log()
        self.process = None

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def tickets(self) -> list[dict[str, Any]]:
        return self.cli("tickets")

    def received(self, number: int) -> list[str]:
        """Subjects of the customer's messages on a ticket (not our notifications to the team)."""
        messages = self.cli("ticket", "show", str(number))["messages"]
        return [m["subject"] for m in messages if m["direction"] == "inbound"]


@pytest.fixture
def bridge(tmp_path: Path) -> Any:
    made: list[Bridge] = []

    def make(listen: str, smtp: str = "", limit: int = LIMIT) -> Bridge:
        keys = f'mode = "lmtp"\nmax_message_size = {limit}\n{smtp}'
        made.append(Bridge(tmp_path, listen, keys))
        return made[-1]

    yield make
    for b in made:
        if b.process is not None:
            b.process.kill()


def behind_postfix(
    transport: str, postfix_factory: Callable[..., PostfixServer], bridge: Any, limit: int = LIMIT
) -> tuple[PostfixServer, Bridge]:
    """Postfix and mailbridge wired as the README says, for `transport` tcp or unix."""
    if transport == "tcp":
        port = free_port()
        postfix = postfix_factory(f"lmtp:inet:[127.0.0.1]:{port}", message_size_limit=limit)
        return postfix, bridge(f"127.0.0.1:{port}", limit=limit)
    # inside the queue directory, which is the chroot of Debian's lmtp; the path in the
    # transport is relative to it, the one mailbridge binds is the same file seen from outside
    postfix = postfix_factory("lmtp:unix:mailbridge/lmtp.sock", message_size_limit=limit)
    directory = postfix.queue_dir / "mailbridge"  # README: install -d -g postfix -m 0750
    directory.mkdir(mode=0o750)
    os.chown(directory, -1, grp.getgrnam("postfix").gr_gid)
    return postfix, bridge(
        f"unix:{directory / 'lmtp.sock'}", 'socket_group = "postfix"', limit=limit
    )


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_mail_through_postfix_becomes_tickets_and_survives_an_outage(
    transport: str, postfix_factory: Callable[..., PostfixServer], bridge: Any
) -> None:
    postfix, mb = behind_postfix(transport, postfix_factory, bridge)
    mb.start()
    if transport == "unix":
        sock = postfix.queue_dir / "mailbridge" / "lmtp.sock"
        # Postfix's lmtp runs as the postfix user: it gets in through the group, not as owner
        info = sock.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert grp.getgrgid(info.st_gid).gr_name == "postfix"

    first = crlf(make_mail(subject="Printer on fire", message_id="<first@customer.example>"))
    assert postfix.send(first, [SUPPORT], CUSTOMER) == {}
    postfix.wait_for(lambda: len(mb.tickets()) == 1, "the first ticket")
    ticket = mb.cli("ticket", "show", "1")
    assert ticket["subject"] == "Printer on fire"
    assert ticket["reply_to"].startswith("support+")

    # a reply to the ticket's own address: only the plus-token (no In-Reply-To) links it
    reply = crlf(make_mail(subject="more details", body="It is still burning.\n"))
    assert postfix.send(reply, [ticket["reply_to"]], CUSTOMER) == {}
    postfix.wait_for(lambda: len(mb.received(1)) == 2, "the reply on ticket 1")
    assert mb.received(1) == ["Printer on fire", "more details"]
    assert len(mb.tickets()) == 1

    # unknown users are refused in the SMTP dialogue, so Postfix never has to bounce them
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        postfix.send(crlf(make_mail()), ["nobody@example.com"], CUSTOMER)
    code, text = refused.value.recipients["nobody@example.com"]
    assert code == 550 and b"User unknown" in text

    # mailbridge down: Postfix accepts the mail and keeps it in its deferred queue
    mb.stop()
    late = crlf(make_mail(subject="Sent during the outage", message_id="<late@customer.example>"))
    assert postfix.send(late, [SUPPORT], CUSTOMER) == {}
    postfix.wait_for(
        lambda: [m["queue_name"] for m in postfix.queue()] == ["deferred"], "the deferral"
    )
    [queued] = postfix.queue()
    assert queued["recipients"][0]["address"] == SUPPORT
    assert queued["queue_id"] in postfix.queue_listing()

    mb.start()
    postfix.flush()
    postfix.wait_for(lambda: postfix.queue() == [], "the deferred mail to be delivered")
    assert [t["subject"] for t in mb.tickets()] == ["Printer on fire", "Sent during the outage"]
    assert mb.received(2) == ["Sent during the outage"]
    sent = [line for line in postfix.deliveries() if queued["queue_id"] in line]
    assert len(sent) == 1, sent
    mb.stop()


def test_postfix_refuses_in_the_dialogue_what_mailbridge_would_refuse(
    postfix_factory: Callable[..., PostfixServer], bridge: Any
) -> None:
    """message_size_limit = max_message_size: every message Postfix queues fits mailbridge.

    Postfix counts its queue file (its own Received header included), so the largest message it
    takes is a little under the limit; that one must still be delivered, not bounced.
    """
    postfix, mb = behind_postfix("tcp", postfix_factory, bridge, limit=SMALL_LIMIT)
    mb.start()

    def queued(size: int) -> bool:
        try:
            postfix.send(mail_of_size(size), [SUPPORT], CUSTOMER)
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 552, exc
            return False
        return True

    low, high = SMALL_LIMIT // 2, SMALL_LIMIT + 1  # queued(low) holds, queued(high) does not
    accepted = 0
    while high - low > 1:
        middle = (low + high) // 2
        if queued(middle):
            low, accepted = middle, accepted + 1
        else:
            high = middle
    assert SMALL_LIMIT - 2048 < low < SMALL_LIMIT
    postfix.wait_for(lambda: postfix.queue() == [], "every accepted message to be delivered")
    assert len(postfix.deliveries("sent")) == accepted
    assert postfix.deliveries("bounced") == []
    assert len(mb.tickets()) == accepted
    mb.stop()


# root can run a probe as nobody, with a Python outside root's home and the venv
CAN_PROBE_AS_NOBODY = os.getuid() == 0 and os.access("/usr/bin/python3", os.X_OK)


def connects_as_nobody(sock: Path) -> bool:
    """Whether an unprivileged local user (uid 65534, no groups) can connect to `sock`."""
    probe = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    done = subprocess.run(
        ["/usr/bin/python3", "-c", probe, str(sock)],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 or "PermissionError" in done.stderr, done.stderr
    return done.returncode == 0


@pytest.fixture
def open_dir() -> Any:
    """A directory anyone may enter (pytest's tmp dirs are 0700): only a socket's mode counts."""
    path = Path(tempfile.mkdtemp(prefix="mb-sock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_socket_mode_defaults_to_0660_and_follows_the_config(
    tmp_path: Path, open_dir: Path
) -> None:
    sock = open_dir / "lmtp.sock"
    url = f"sqlite:///{tmp_path}/mailbridge.db"
    config = write_config(tmp_path / "mailbridge.toml", url, f"unix:{sock}", 'mode = "lmtp"')
    with InProcessDaemon(settings_from(config)):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert sock.stat().st_gid == os.getgid()
        if CAN_PROBE_AS_NOBODY:
            assert not connects_as_nobody(sock)  # 0666 let any local user inject mail

    if CAN_PROBE_AS_NOBODY:
        smtp = 'mode = "lmtp"\nsocket_mode = "0666"'
        config = write_config(tmp_path / "mailbridge.toml", url, f"unix:{sock}", smtp)
        with InProcessDaemon(settings_from(config)):
            assert connects_as_nobody(sock)  # the probe itself works: it is the mode that stops it

    # root may hand the socket to any group, anyone else only to their own
    others = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
    group = others[0] if os.getuid() == 0 and others else grp.getgrgid(os.getgid())
    smtp = f'mode = "lmtp"\nsocket_mode = "0620"\nsocket_group = "{group.gr_name}"'
    config = write_config(tmp_path / "mailbridge.toml", url, f"unix:{sock}", smtp)
    with InProcessDaemon(settings_from(config)):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o620
        assert sock.stat().st_gid == group.gr_gid


def test_bad_socket_settings_are_named_by_check_config(tmp_path: Path) -> None:
    config = tmp_path / "mailbridge.toml"
    config.write_text(
        '[smtp]\nlisten = "unix:/run/mb.sock"\nsocket_mode = "0669"\n'
        'socket_group = "no-such-group"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{config}:3: smtp.socket_mode: invalid socket mode '0669' (use octal permissions,"
        " e.g. '0660')",
        f"{config}:4: smtp.socket_group: no such group: 'no-such-group'",
    ]
    config.write_text("[smtp]\nsocket_mode = 660\n")  # decimal 660 would be mode 1224
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"])
    assert result.output.splitlines() == [f"{config}:2: smtp.socket_mode: expected a string"]
