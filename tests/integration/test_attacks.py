"""Variants of issue 14's attacks the first fixes missed, against `mailbridge run` itself.

The daemon runs as a subprocess with an aiosmtpd sink as its smarthost and is spoken to with
smtplib from loopback, a trusted peer, so its Authentication-Results headers are read. Each
forged reply is written the way a border MTA would let it through: the MTA strips only headers
it recognises as claiming its own authserv-id, and adds none of its own to this mail (say, an
authenticated submission), so only mailbridge's own reading stands between the forger and agent
authority.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.servers.ports import free_port
from bench.servers.smtp_sink import Received, SmtpSink
from tests.configs import SUPPORT, TRUSTED, mailbridge_toml
from tests.env import REPO
from tests.helpers_daemon import DaemonProcess
from tests.mail import make_mail

TEAM = "team@example.com"
AGENT = "alice@example.com"
PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"


@dataclass
class Desk:
    workdir: Path
    config: Path
    port: int
    sink: SmtpSink

    def send(self, raw: bytes, sender: str, rcpt: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail(sender, [rcpt], raw)

    def open_ticket(self, customer: str) -> tuple[int, Received]:
        """A customer writes; returns the ticket number and the agents' notification of it."""
        before = len(self.sink.received)
        self.send(make_mail(sender=customer), customer, "support@example.com")
        note = self.sink.wait_for(before + 1)[before]
        assert TEAM in note.rcpt_tos
        return int(note.message["X-Mailbridge-Ticket"]), note

    def ticket(self, number: int) -> dict[str, Any]:
        """What `mailbridge ticket show --json` tells the operator."""
        argv = ["--config", str(self.config), "ticket", "show", str(number), "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "mailbridge", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    workdir = tmp_path_factory.mktemp("attacks")
    with SmtpSink.running() as sink:
        port = free_port()
        config = workdir / "mailbridge.toml"
        config.write_text(
            mailbridge_toml(
                f"sqlite:///{workdir}/mailbridge.db",
                listen=f"127.0.0.1:{port}",
                agents=f'addresses = ["{AGENT}"]\nnotify = ["{TEAM}"]\n{TRUSTED}',
                tickets="max_new_per_sender_per_hour = 1000\n",
                outbound=sink.outbound_toml(from_address=SUPPORT),
            )
        )
        proc = DaemonProcess(workdir, config)
        try:
            yield Desk(workdir, config, port, sink)
        finally:
            proc.terminate()


def forged_reply(note: Received, header_lines: bytes) -> tuple[bytes, str]:
    """An agent's reply with `#close` and a phishing line, with these header lines on top."""
    reply_to = note.message["Reply-To"].addresses[0].addr_spec
    raw = make_mail(
        sender=AGENT,
        to=reply_to,
        subject=f"Re: {note.message['Subject']}",
        in_reply_to=note.message["Message-ID"],
        body="#close\n\nPlease confirm your card number at https://evil.test/\n",
    )
    return header_lines + raw, reply_to


def last_mail(shown: dict[str, Any]) -> dict[str, Any]:
    """The ticket's last message that came in by mail (not our notification of it)."""
    return dict([m for m in shown["messages"] if m["author_kind"] != "system"][-1])


def test_a_genuine_pass_from_the_trusted_server_is_agent_authority(desk: Desk) -> None:
    """The control: the same reply with the border MTA's own header is relayed and closes."""
    number, note = desk.open_ticket("control@customer.example")
    raw, rcpt = forged_reply(note, f"Authentication-Results: {PASS}\r\n".encode())
    desk.send(raw, AGENT, rcpt)
    shown = desk.ticket(number)
    assert shown["status"] == "closed"
    assert last_mail(shown)["author_kind"] == "agent"


@pytest.mark.parametrize(
    "header_lines",
    [
        # RFC 2047 is not allowed in this structured header; the MTA sees an authserv-id of
        # "=?us-ascii?q?mx.example.com=3B..." and leaves it alone
        b"Authentication-Results: =?us-ascii?q?mx.example.com=3B_dkim=3Dpass_header.d=3D"
        b"example.com=3B_dmarc=3Dpass_header.from=3Dexample.com?=\r\n",
        # obsolete `name :` syntax: not a header an MTA recognises as Authentication-Results
        f"Authentication-Results : {PASS}\r\n".encode(),
    ],
    ids=["encoded-word", "space-before-colon"],
)
def test_a_header_the_mta_would_not_recognise_gives_no_authority(
    desk: Desk, header_lines: bytes
) -> None:
    customer = f"victim-{len(header_lines)}@customer.example"
    number, note = desk.open_ticket(customer)
    raw, rcpt = forged_reply(note, header_lines)
    desk.send(raw, AGENT, rcpt)
    shown = desk.ticket(number)
    assert shown["status"] == "new"
    assert last_mail(shown)["author_kind"] == "customer"
    assert "unauthenticated-agent" in [e["kind"] for e in shown["events"]]
    assert customer not in {r for m in desk.sink.received for r in m.rcpt_tos}


FORWARDED = (
    b"From: fwd@customer.example\r\n"
    b"To: support@example.com\r\n"
    b"Subject: see the forwarded mail\r\n"
    b"Message-ID: <fwd-1@customer.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Forwarded below.\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: someone@elsewhere.test\r\n"
    b"Subject: inner\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Invoice attached.\r\n"
    b"--inner\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''..%2F..%2Fetc%2Fpasswd\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"cm9vdDp4OjA6MDo=\r\n"
    b"--inner\r\n"
    b"Content-Type: application/octet-stream;\r\n"
    b' name="=?utf-8?b?aW52b2ljZeKArmZkcC5leGU=?="\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"TVqQAA==\r\n"
    b"--inner--\r\n"
    b"--outer--\r\n"
)


def test_names_inside_a_forwarded_message_are_sanitised_in_the_notification(desk: Desk) -> None:
    """The agents' copy of a forwarded mail: its own attachments lose directories and bidi
    characters too, not only the outer ones (`invoice<RLO>fdp.exe` shows as invoiceexe.pdf)."""
    before = len(desk.sink.received)
    desk.send(FORWARDED, "fwd@customer.example", "support@example.com")
    note = desk.sink.wait_for(before + 1)[before]
    names = [p.get_filename() for p in note.message.walk() if p.get_filename()]
    inner = [n for n in names if not n.endswith(".eml")]
    assert sorted(inner) == ["invoicefdp.exe", "passwd"]
