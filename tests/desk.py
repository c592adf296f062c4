"""The core driven the way the live SMTP listener drives it, with a set clock and an aiosmtpd sink
as smarthost: `Desk`, and the customer and agent helpers the outbound, agent, queue and
participant tests share. The `make_desk` and `desk` fixtures of tests/conftest.py build one.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from bench.servers.smtp_sink import Received, SmtpSink
from mailbridge.app import App
from mailbridge.clock import FixedClock
from mailbridge.envelope import Envelope, Outcome, Source
from mailbridge.outbound.sender import OutboxSender, SenderConfig
from mailbridge.storage import repo
from tests.configs import SUPPORT
from tests.mail import make_mail

CUSTOMER = "carol@customer.example"
TEAM = "team@example.com"
LIVE = Source("smtp", "127.0.0.1:2525", live=True)
ACK = "acknowledge = true\nack_max_per_sender_per_hour = 3\n"


class Desk:
    """The core with a sink as smarthost: customers and agents write, `deliver()` runs the outbox."""

    def __init__(self, app: App, sink: SmtpSink, clock: FixedClock, **sender: Any) -> None:
        self.app, self.sink, self.clock = app, sink, clock
        self.sender = OutboxSender(
            app.store, SenderConfig.from_settings(app.settings), clock, **sender
        )
        self._seen = 0

    def accept(
        self, raw: bytes, sender: str = CUSTOMER, rcpts: tuple[str, ...] = (SUPPORT,), **env: Any
    ) -> Outcome:
        return self.app.ingestor.accept(raw, Envelope(sender, rcpts, **env), LIVE)

    def customer(self, **mail: Any) -> tuple[Outcome, bytes]:
        raw = make_mail(**mail)
        return self.accept(raw), raw

    def deliver(self) -> list[Received]:
        """Run the sender once; the mail that arrived at the sink this time."""
        self.sender.deliver_due()
        new = self.sink.received[self._seen :]
        self._seen = len(self.sink.received)
        return new

    def ticket(self, number: int) -> Any:
        with self.app.store.unit() as session:
            return repo.get_ticket(session, number)

    def messages(self, number: int) -> list[Any]:
        with self.app.store.unit() as session:
            return repo.ticket_messages(session, number)

    def outbox(self) -> list[Any]:
        with self.app.store.unit() as session:
            return repo.list_outbox(session)

    def events(self, number: int) -> list[Any]:
        with self.app.store.unit() as session:
            return repo.ticket_events(session, number)


MakeDesk = Callable[..., Desk]


def only(received: list[Received], rcpt: str) -> Received:
    found = [r for r in received if rcpt in r.rcpt_tos]
    assert len(found) == 1, [r.rcpt_tos for r in received]
    return found[0]


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


ALICE = "alice@example.com"
AGENT_FROM = f"Alice Agent <{ALICE}>"
DKIM_PASS = "mx.example.com; dkim=pass header.d=example.com header.s=mail; spf=pass"


def quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


def answer(to: Received, body: str, sender: str = AGENT_FROM, **mail: Any) -> bytes:
    """A reply the way a mail client writes it: threading headers, and the mail quoted below."""
    msg = to.message
    reply_to = (
        msg["Reply-To"].addresses[0].addr_spec
        if msg["Reply-To"]
        else msg["From"].addresses[0].addr_spec
    )
    text = f"{body}\n\nOn Mon, 2 Nov 2026 at 09:00, {msg['From']} wrote:\n{quote(text_of(msg))}\n"
    mail = {
        "to": reply_to,
        "subject": f"Re: {msg['Subject']}",
        "in_reply_to": msg["Message-ID"],
    } | mail
    return make_mail(sender=sender, body=text, references=msg["References"], **mail)


def agent_answer(desk: Desk, to: Received, body: str, **mail: Any) -> Outcome:
    """An agent, logged in at the listener (SMTP AUTH), answers a notification."""
    raw = answer(to, body, **mail)
    rcpt = to.message["Reply-To"].addresses[0].addr_spec
    return desk.accept(raw, sender=ALICE, rcpts=(rcpt,), auth_user=ALICE)


def open_ticket(desk: Desk, **mail: Any) -> tuple[int, Received]:
    """A customer writes; returns the ticket and the agents' notification."""
    outcome, _ = desk.customer(**mail)
    assert outcome.outcome == "created" and outcome.ticket is not None
    return outcome.ticket, only(desk.deliver(), TEAM)


def participants(desk: Desk, number: int) -> list[str]:
    with desk.app.store.unit() as session:
        return repo.participants(session, number)
