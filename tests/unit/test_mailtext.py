"""Text of outgoing mail: header values that cannot start a header of their own, reply subjects,
addresses we can write, templates, and our footer taken out of an agent's reply."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from mailbridge.mailtext import (
    FOOTER_COMMANDS,
    FOOTER_MARK,
    header_safe,
    mailbox,
    render,
    reply_subject,
    strip_footer,
)

# --- header values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Printer\r\nBcc: victim@example.net",
        "Printer\nBcc: victim@example.net",
        "Printer\rBcc: victim@example.net",
        "Printer\u2028Bcc: victim@example.net",
        "Printer\x85Bcc: victim@example.net",
        "Printer\x00\x1bBcc: victim@example.net",
    ],
)
def test_a_line_break_in_a_value_cannot_start_a_header(value: str) -> None:
    safe = header_safe(value)
    assert safe == "Printer Bcc: victim@example.net"
    assert len(safe.splitlines()) == 1
    msg = EmailMessage()
    msg["Subject"] = safe  # the email package refuses CR/LF: this would raise
    written = msg.as_bytes()
    assert b"\nBcc:" not in written and b"\rBcc:" not in written


def test_header_values_are_single_spaced_and_bounded() -> None:
    assert header_safe("  a \t\t b  ") == "a b"
    assert header_safe("x" * 2000) == "x" * 900
    assert header_safe("x" * 300, limit=200) == "x" * 200


# --- reply subjects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer on fire", "Re: Printer on fire"),
        ("Re: Printer on fire", "Re: Printer on fire"),
        ("RE: AW: Re: Printer on fire", "Re: Printer on fire"),
        ("Fwd: SV: Re[2]: Printer on fire", "Re: Printer on fire"),
        ("", "Re: your message"),
        ("Re: ", "Re: your message"),
        ("Printer\r\nBcc: x@y", "Re: Printer Bcc: x@y"),
        ("Return of the printer", "Re: Return of the printer"),  # a word, not a prefix
    ],
)
def test_reply_subjects_do_not_pile_up_prefixes(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


# --- addresses ----------------------------------------------------------------------------


def test_a_plain_address_becomes_a_header_address() -> None:
    box = mailbox("Carol\r\nCustomer", "carol@customer.example")
    assert box is not None
    assert (box.display_name, box.addr_spec) == ("Carol Customer", "carol@customer.example")


@pytest.mark.parametrize(
    "address",
    [
        "carol@customer.example, victim@example.net",
        "carol@customer.example>\r\nBcc: victim@example.net",
        "carol",
        "karl@bücher.example",
        '"carol"@customer.example',
    ],
)
def test_an_address_we_cannot_write_exactly_is_refused(address: str) -> None:
    assert mailbox("Carol", address) is None


# --- templates ----------------------------------------------------------------------------


def test_a_template_s_first_line_may_give_the_subject() -> None:
    subject, body = render(
        "Subject: Ticket $tag\n\nDear $name,\n$unknown\n", {"tag": "[#7]", "name": "Carol"}
    )
    assert subject == "Ticket [#7]"
    assert body == "Dear Carol,\n$unknown\n"  # unknown placeholders stay as written
    assert render("Dear $name\n", {"name": "Carol"}) == (None, "Dear Carol\n")


# --- the footer in agents' replies --------------------------------------------------------


def test_text_without_our_footer_is_unchanged() -> None:
    text = "Fixed it.\n\n-- \nAlice\n"
    assert strip_footer(text) == text


def test_a_quoted_notification_goes_with_its_attribution() -> None:
    reply = (
        "Fixed it, Carol.\n"
        "\n"
        "On Mon, 2 Nov 2026 at 08:00, Mailbridge <support@example.com> wrote:\n"
        "> New ticket [#7] from Carol\n"
        ">\n"
        "> The printer is on fire.\n"
        "> --\n"
        f"> {FOOTER_MARK}\n"
        f"> {FOOTER_COMMANDS}\n"
    )
    assert strip_footer(reply) == "Fixed it, Carol."


def test_an_outlook_style_original_message_goes_from_its_separator() -> None:
    reply = (
        "Fixed it.\n"
        "\n"
        "-----Original Message-----\n"
        "From: Mailbridge <support@example.com>\n"
        "Sent: Monday, November 2, 2026 08:00\n"
        "\n"
        "The printer is on fire.\n"
        f"{FOOTER_MARK}\n"
    )
    assert strip_footer(reply) == "Fixed it."


def test_a_bare_footer_takes_only_its_own_lines() -> None:
    reply = f"Fixed it.\n\n--\n{FOOTER_MARK}\n{FOOTER_COMMANDS}\n\nAlice\n"
    assert strip_footer(reply) == "Fixed it.\n\n\nAlice"


def test_a_commands_only_reply_keeps_nothing_of_the_quote() -> None:
    reply = f"#resolve\n\nOn Mon, Mailbridge wrote:\n> Hello\n> {FOOTER_MARK}\n"
    assert strip_footer(reply) == "#resolve"
