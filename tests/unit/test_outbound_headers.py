"""Outbound mail: header safety, threading headers, Thread-Index, footer stripping, templates."""

from __future__ import annotations

import base64
from email import message_from_bytes, policy

import pytest

from mailbridge import mailtext
from mailbridge.mailtext import (
    FOOTER_COMMANDS,
    FOOTER_MARK,
    header_safe,
    mailbox,
    reply_subject,
    strip_footer,
)
from mailbridge.outbound.compose import (
    MAX_REFERENCES,
    Part,
    compose,
    conversation_id,
    thread_index,
    trim_references,
)
from mailbridge.parse import parse
from mailbridge.storage.models import Ticket
from tests.outbound_parts import NOW, make_draft, make_pending, make_ticket, make_written

FOOTER = f"-- \n{FOOTER_MARK}\nNew ticket [#7] (new) from Carol <carol@customer.example>\n{FOOTER_COMMANDS}"


def built(ticket: Ticket | None = None, **kw: object) -> bytes:
    ticket = ticket or make_ticket()
    msg = compose(make_pending(ticket, make_draft(**kw)), ["first@customer.example"], [])
    return msg.as_bytes(policy=policy.SMTP)


# --- header values -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\u2028", "\x85", "\x0b", "\x00"])
def test_header_safe_leaves_one_line(bad: str) -> None:
    assert header_safe(f"Hello{bad}Bcc: evil@example.net") == "Hello Bcc: evil@example.net"


def test_injected_subject_and_name_stay_inside_their_headers() -> None:
    raw = built(
        subject="Hi\r\nBcc: evil@example.net\r\n\r\nbody",
        from_name="Alice\nX-Injected: yes via Support",
        to=[mailbox("Carol\r\nCc: evil@example.net", "carol@customer.example")],
    )
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and msg["Cc"] is None and msg["X-Injected"] is None
    assert "\n" not in str(msg["Subject"]) and "Bcc: evil@example.net" in str(msg["Subject"])
    assert [a.addr_spec for a in msg["To"].addresses] == ["carol@customer.example"]
    assert msg.get_content().rstrip() == "Hello"


@pytest.mark.parametrize(
    "address",
    [
        "carol@customer.example>, evil@example.net",
        "no-at-sign",
        "jörg@example.de",
        "a b@example.com",
        "carol(comment)@customer.example",
        "a@b@c.example",
        "a@",
    ],
)
def test_unsafe_addresses_are_refused(address: str) -> None:
    assert mailbox("x", address) is None


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer on fire", "Re: Printer on fire"),
        ("Re: AW: RE: Printer", "Re: Printer"),
        ("Fwd: Sv: Printer", "Re: Printer"),
        ("", "Re: your message"),
    ],
)
def test_reply_subject(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


# --- threading headers ---------------------------------------------------------------------


def test_threading_headers() -> None:
    msg = message_from_bytes(built(), policy=policy.default)
    assert msg["Message-ID"] == "<own@example.com>"
    assert msg["In-Reply-To"] == "<first@customer.example>"
    assert msg["References"].split() == ["<first@customer.example>", "<own@example.com>"]
    assert msg["Subject"] == "Re: Printer on fire [#7]"
    assert msg["Reply-To"].addresses[0].addr_spec == "support+abcdefghijklmnop@example.com"
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Loop"] == "support@example.com"
    assert msg["X-Mailbridge-Ticket"] == "7"
    assert msg["Date"] is not None


def test_human_mail_is_not_auto_submitted() -> None:
    msg = message_from_bytes(built(auto_submitted=None, kind="relay"), policy=policy.default)
    assert msg["Auto-Submitted"] is None
    assert msg["X-Loop"] == "support@example.com"


def test_thread_index_is_set_on_the_ticket_and_parses_back_to_it() -> None:
    ticket = make_ticket()
    raw = built(ticket)
    assert ticket.thread_index == conversation_id(ticket.token, NOW).hex()
    assert parse(raw).thread_index == ticket.thread_index


def test_a_customers_outlook_conversation_is_kept() -> None:
    theirs = bytes(range(1, 23)).hex()
    raw = built(make_ticket(thread_index=theirs))
    assert parse(raw).thread_index == theirs


def test_thread_index_layout() -> None:
    block = conversation_id("abcdefghijklmnop", NOW)
    assert len(block) == 22 and block[0] == 0x01  # FILETIME's top byte for this century
    assert block == conversation_id("abcdefghijklmnop", NOW)
    assert block != conversation_id("qrstuvwxyz234567", NOW)
    value = base64.b64decode(thread_index(block, NOW.replace(hour=10)))
    assert len(value) == 27 and value[:22] == block


def test_references_keep_the_first_and_the_latest() -> None:
    ids = [f"{n}@x" for n in range(50)]
    kept = trim_references(ids)
    assert len(kept) == MAX_REFERENCES
    assert kept[0] == "0@x" and kept[-1] == "49@x"


def test_an_attachment_that_cannot_be_written_costs_only_the_attachments() -> None:
    # the email package cannot write this part (a stand-in for a MIME structure it chokes on)
    part = Part(object(), "text/plain", "x.txt")  # type: ignore[arg-type]
    built = make_written(make_ticket(), make_draft(), [], [part])
    assert built is not None
    msg = built.message
    assert not list(msg.iter_attachments())
    assert "attachments could not be copied" in msg.get_content()


def test_undecodable_text_is_replaced_not_fatal() -> None:
    raw = built(body="broken \udcff byte\n")
    assert b"broken" in raw


# --- footer --------------------------------------------------------------------------------


def quoted(text: str, prefix: str = "> ") -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


def test_footer_alone_is_removed() -> None:
    assert strip_footer(f"Thanks, fixed.\n\n{FOOTER}\n") == "Thanks, fixed."


def test_quoted_notification_goes_with_its_attribution() -> None:
    notification = f"Hello,\nthe printer is on fire.\n\n{FOOTER}"
    reply = (
        "We are sending a technician.\n\nAlice\n\n"
        "On Mon, 2 Nov 2026 at 09:00, Carol via Support <support+abcdefghijklmnop@example.com>\n"
        f"wrote:\n{quoted(notification)}\n"
    )
    assert strip_footer(reply) == "We are sending a technician.\n\nAlice"


def test_nested_and_tight_quotes() -> None:
    reply = f"Done.\n\n{quoted(quoted(FOOTER), '>')}"
    assert strip_footer(reply) == "Done."


def test_outlook_style_original_below_a_separator() -> None:
    reply = (
        "Will do.\n\n-----Original Message-----\nFrom: Carol via Support <support@example.com>\n"
        f"Sent: Monday\nSubject: Printer\n\nthe printer is on fire\n\n{FOOTER}\n"
    )
    assert strip_footer(reply) == "Will do."


def test_outlook_header_block_without_separator() -> None:
    reply = (
        "Will do.\n\nFrom: Carol via Support <support@example.com>\nSent: Monday\n"
        f"To: team@example.com\n\nthe printer is on fire\n\n{FOOTER}\n"
    )
    assert strip_footer(reply) == "Will do."


def test_unprefixed_quote_of_an_html_reply_goes_from_its_attribution() -> None:
    reply = (
        "On Monday we replace the toner. Steps:\n1. open it\n\n"
        "On Mon, 2 Nov 2026 at 09:00, Carol via Support <support@example.com>\nwrote:\n\n"
        f"the printer is on fire\n\n{FOOTER}\n"
    )
    assert strip_footer(reply) == "On Monday we replace the toner. Steps:\n1. open it"


def test_commands_only_reply_leaves_nothing() -> None:
    quote = quoted("fire!\n\n" + FOOTER)
    assert strip_footer(f"On Monday Carol wrote:\n{quote}") == ""


def test_text_without_footer_is_untouched() -> None:
    text = "Hello\n> quoted\n-- \nAlice"
    assert strip_footer(text) == text


def test_inline_reply_keeps_the_agents_answers() -> None:
    quote = quoted("more\n\n" + FOOTER)
    reply = f"> Is it on fire?\nYes, call 112.\n\n{quote}"
    assert strip_footer(reply) == "> Is it on fire?\nYes, call 112."


# --- templates -----------------------------------------------------------------------------


def test_render_takes_an_optional_subject_line() -> None:
    assert mailtext.render("Subject: About $tag\nHi $name", {"tag": "[#1]", "name": "C"}) == (
        "About [#1]",
        "Hi C",
    )
    assert mailtext.render("Hi $name, $unknown", {"name": "C"}) == (None, "Hi C, $unknown")


def test_default_templates_use_known_fields() -> None:
    values = {
        "number": 1,
        "tag": "[#1]",
        "subject": "s",
        "status": "new",
        "customer": "c@x",
        "name": "C",
        "reply_to": "r@x",
        "from_name": "Support",
        "reasons": "- r",
        "rule": "auto",
        "recipients": "c@x",
        "error": "550",
        "confirm": "",
        "target": "first_response",
        "sla": "standard",
        "due": "2026-11-02T13:00:00+00:00",
        "detail": "missed by 5m",
        "idle": "5d",
    }
    for name in ("ack", "refused", "rule", "failed", "sla_breach", "remind", "escalate"):
        _, body = mailtext.render(mailtext.template(name), values)
        assert "$" not in body, name
