"""Forged Authentication-Results never give agent authority (issue 14, item 1).

Through the ingest pipeline with a real aiosmtpd sink as smarthost, and through the real listener
spoken to with smtplib: a forged mail from an agent's address is customer mail, so nothing is
relayed to the customer, the ticket's status does not follow its commands, and the agents see an
`unauthenticated-agent` event.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from bench.servers.ports import free_port
from bench.servers.smtp_sink import Received
from mailbridge.storage import repo
from tests.desk import ALICE, CUSTOMER, SUPPORT, Desk, answer, open_ticket
from tests.helpers_daemon import InProcessDaemon, settings_from
from tests.mail import make_mail, message_id_of

REAL_FAIL = "mx.example.com; dkim=none; dmarc=fail (p=reject dis=reject) header.from=example.com"
FORGED_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"


def with_ar(raw: bytes, value: str) -> bytes:
    """What the border MTA does: its own header goes on top of whatever the sender wrote."""
    return f"Authentication-Results: {value}\n".encode() + raw


def reply_address(note: Received) -> str:
    return str(note.message["Reply-To"].addresses[0].addr_spec)


def last_mail(desk: Desk, number: int) -> Any:
    """The ticket's last message that came in by mail (not our notifications of it)."""
    return [m for m in desk.messages(number) if m.author_kind != "system"][-1]


def assert_customer_mail(desk: Desk, number: int, status: str = "new") -> None:
    """What the forger hoped for did not happen: no relay, no status change, a warning event."""
    assert desk.ticket(number).status == status
    arrived = desk.deliver()
    assert CUSTOMER not in {r for m in arrived for r in m.rcpt_tos}
    assert [r.kind for r in desk.outbox() if r.kind == "relay"] == []
    assert last_mail(desk, number).author_kind == "customer"
    assert "unauthenticated-agent" in [e.kind for e in desk.events(number)]


def test_a_forged_pass_below_the_trusted_servers_fail_is_customer_mail(desk: Desk) -> None:
    number, note = open_ticket(desk)
    forged = answer(
        note,
        "#close\n\nPlease confirm your card number at https://evil.test/",
        headers={"Authentication-Results": FORGED_PASS},
    )
    outcome = desk.accept(with_ar(forged, REAL_FAIL), sender=ALICE, rcpts=(reply_address(note),))
    assert outcome.ticket == number
    assert_customer_mail(desk, number)
    assert "dmarc=fail" in last_mail(desk, number).verdict


@pytest.mark.parametrize(
    "value",
    [
        "mx.example.com; dmarc=pass",  # no header.from: not a pass for the From domain
        "mx.example.com; dmarc=pass (p=none; dis=none) header.from=evil.test",
        "mx.example.com; dkim=pass header.d=evil.test; spf=pass smtp.mailfrom=alice@example.com",
    ],
    ids=["no-header-from", "semicolon-in-comment", "other-signer"],
)
def test_a_pass_that_does_not_name_the_from_domain_is_customer_mail(desk: Desk, value: str) -> None:
    number, note = open_ticket(desk)
    forged = answer(note, "#delete\n\nYour account is closed.")
    desk.accept(with_ar(forged, value), sender=ALICE, rcpts=(reply_address(note),))
    assert_customer_mail(desk, number)


def test_the_trusted_servers_pass_on_top_still_gives_authority(desk: Desk) -> None:
    number, note = open_ticket(desk)
    real = answer(note, "#resolve\n\nFixed, it was the toner.")
    desk.accept(with_ar(real, FORGED_PASS), sender=ALICE, rcpts=(reply_address(note),))
    assert desk.ticket(number).status == "resolved"
    relayed = [m for m in desk.deliver() if CUSTOMER in m.rcpt_tos]
    assert len(relayed) == 1 and "it was the toner" in relayed[0].content.decode()


# --- through the real listener ---------------------------------------------------------------


def listener_config(tmp_path: Path, url: str, port: int, smtp: str = "") -> Path:
    config = tmp_path / "mailbridge.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\naddresses = ["{SUPPORT}"]\n{smtp}\n'
        f'[agents]\naddresses = ["{ALICE}"]\ntrusted_authserv_ids = ["mx.example.com"]\n'
        '[outbound]\nfrom_address = "support@example.com"\n'
    )
    return config


def send(port: int, raw: bytes, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert smtp.sendmail(sender, [SUPPORT], raw.replace(b"\n", b"\r\n")) == {}


def agent_reply_over_the_listener(tmp_path: Path, url: str, smtp: str) -> tuple[str, list[str]]:
    """A customer writes, then the agent's reply carrying a pass from our MX arrives; returns the
    ticket's status and the kinds of outbox rows."""
    port = free_port()
    with InProcessDaemon(settings_from(listener_config(tmp_path, url, port, smtp))) as daemon:
        first = make_mail(subject="Help")
        send(port, first, CUSTOMER)
        reply = make_mail(
            sender=f"Alice <{ALICE}>",
            subject="Re: Help",
            in_reply_to=message_id_of(first),
            body="#close\n\nAll done, see https://evil.test/\n",
        )
        send(port, with_ar(reply, FORGED_PASS), ALICE)
        with daemon.daemon.app.store.unit() as session:
            (ticket,) = repo.all_tickets(session)
            kinds = [row.kind for row in repo.list_outbox(session)]
            authors = [m.author_kind for m in repo.ticket_messages(session, ticket.number)]
        assert authors[:2] == ["customer", "customer" if "relay" not in kinds else "agent"]
        return ticket.status, kinds


def test_the_listener_ignores_authentication_results_from_an_untrusted_peer(
    tmp_path: Path, sqlite_url: str
) -> None:
    # 127.0.0.1 stands in for a stranger: only 10.0.0.0/8 is the MTA in front of us here
    status, kinds = agent_reply_over_the_listener(
        tmp_path, sqlite_url, 'trusted_peers = ["10.0.0.0/8"]'
    )
    assert status == "new" and "relay" not in kinds


def test_the_listener_trusts_authentication_results_from_the_local_mta(
    tmp_path: Path, sqlite_url: str
) -> None:
    status, kinds = agent_reply_over_the_listener(tmp_path, sqlite_url, "")
    assert status == "closed" and "relay" in kinds
