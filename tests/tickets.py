"""Tickets made through the core the way the file source makes them, for the tests that drive the
App directly: a customer's first mail, and alice's (authenticated) answer to a mail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailbridge.envelope import Envelope, Outcome, Source
from tests.mail import make_mail, message_id_of

if TYPE_CHECKING:
    from mailbridge.app import App

FILE = Source("file", "test", live=False)
AGENT = "alice@example.com"


def new_ticket(app: App, subject: str = "Printer on fire") -> tuple[int, bytes]:
    """A customer writes: the ticket the mail opened, and the mail."""
    raw = make_mail(subject=subject)
    number = app.ingestor.accept(raw, Envelope(), FILE).ticket
    assert number is not None
    return number, raw


def agent_reply(app: App, to: bytes, body: str, subject: str = "Re: x") -> Outcome:
    """alice, logged in, answers the mail `to`."""
    reply = make_mail(sender=AGENT, subject=subject, body=body, in_reply_to=message_id_of(to))
    return app.ingestor.accept(reply, Envelope(auth_user="alice"), FILE)
