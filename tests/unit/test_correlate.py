"""Thread keys (SPEC 2): plus-address tokens, the subject tag, and what a mail offers to find its
ticket, read from small mails as a client writes them."""

from __future__ import annotations

import base64

from mailbridge.correlate import Addressing, Tagger, Tokens, thread_keys
from mailbridge.parse import parse

TOKEN = "abcdefgh234567"  # base32: what new tickets get


def mail(*headers: str, subject: str = "Printer on fire") -> bytes:
    lines = [
        "From: carol@customer.example",
        "To: support@example.com",
        f"Subject: {subject}",
        "Message-ID: <self@customer.example>",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\nHello\r\n").encode()


# --- Tokens -------------------------------------------------------------------------------


def test_a_token_address_is_built_on_the_first_support_address_or_the_given_one() -> None:
    tokens = Tokens(["Support@Example.com", "billing@example.com"])
    assert tokens.address(TOKEN) == f"support+{TOKEN}@example.com"
    assert tokens.address(TOKEN, "Billing@Example.com") == f"billing+{TOKEN}@example.com"
    assert Tokens(["support@example.com"], "-").address(TOKEN) == f"support-{TOKEN}@example.com"


def test_a_token_is_read_only_from_our_own_addresses() -> None:
    tokens = Tokens(["support@example.com"])
    assert tokens.token_of(f"support+{TOKEN}@example.com") == TOKEN
    assert tokens.token_of(f" SUPPORT+{TOKEN.upper()}@EXAMPLE.COM ") == TOKEN
    assert tokens.token_of(f"sales+{TOKEN}@example.com") is None  # not a support address
    assert tokens.token_of(f"support+{TOKEN}@example.org") is None
    assert tokens.token_of("support+short@example.com") is None  # not a token: too short
    assert tokens.token_of("support@example.com") is None


def test_the_separator_is_the_configured_one() -> None:
    tokens = Tokens(["support@example.com"], separator="-")
    assert tokens.token_of(f"support-{TOKEN}@example.com") == TOKEN
    assert tokens.token_of(f"support+{TOKEN}@example.com") is None


def test_is_ours_covers_the_support_addresses_and_their_token_addresses() -> None:
    tokens = Tokens(["support@example.com"])
    assert tokens.is_ours("Support@Example.com")
    assert tokens.is_ours(f"support+{TOKEN}@example.com")
    assert not tokens.is_ours("carol@customer.example")
    assert not tokens.is_ours(f"carol+{TOKEN}@customer.example")


# --- Tagger -------------------------------------------------------------------------------


def test_the_default_tag_is_formatted_found_and_stripped() -> None:
    tagger = Tagger()
    assert tagger.format(42) == "[#42]"
    assert tagger.find("Re: Printer on fire [#42]") == 42
    assert tagger.find("Re: [# 42 ] Printer") == 42  # clients that pad the tag
    assert tagger.find("Printer #42 on fire") is None
    untag = tagger.strip  # (not str.strip: it takes the tag out, wherever it is)
    assert untag("Re: Printer  [#42] on fire") == "Re: Printer on fire"


def test_tagged_adds_the_tag_once_and_replaces_another_ticket_s_tag() -> None:
    tagger = Tagger()
    assert tagger.tagged("Printer on fire", 7) == "Printer on fire [#7]"
    assert tagger.tagged("Printer on fire [#7]", 7) == "Printer on fire [#7]"
    assert tagger.tagged("Printer on fire [#3]", 7) == "Printer on fire [#7]"
    assert tagger.tagged("", 7) == "[#7]"


def test_a_custom_template_is_matched_literally() -> None:
    tagger = Tagger("(Ticket {number})")
    assert tagger.format(5) == "(Ticket 5)"
    assert tagger.find("Re: hello (Ticket 5)") == 5
    assert tagger.find("Re: hello [#5]") is None
    assert tagger.find("Re: hello (Ticket-5)") is None  # the template's characters, not a regex


# --- Addressing ---------------------------------------------------------------------------


def test_addressing_holds_the_tokens_and_the_tag_of_one_config() -> None:
    addressing = Addressing(["support@example.com"], separator="=", subject_tag="<{number}>")
    assert addressing.tokens.address(TOKEN) == f"support={TOKEN}@example.com"
    assert addressing.tagger.format(9) == "<9>"


# --- thread_keys --------------------------------------------------------------------------


def keys(raw: bytes, recipients: list[str] | None = None) -> tuple[object, ...]:
    found = thread_keys(
        parse(raw), recipients or ["support@example.com"], Tokens(["support@example.com"]), Tagger()
    )
    return found.message_ids, found.thread_index, found.tokens, found.tag_number


def test_a_new_mail_offers_no_keys() -> None:
    assert keys(mail()) == ((), None, (), None)


def test_in_reply_to_comes_first_then_references_newest_first() -> None:
    raw = mail("In-Reply-To: <b@x>", "References: <a@x> <b@x> <c@x>")
    message_ids, *_ = keys(raw)
    assert message_ids == ("b@x", "c@x", "a@x")


def test_the_mail_s_own_message_id_is_not_a_key() -> None:
    message_ids, *_ = keys(mail("References: <a@x> <self@customer.example>"))
    assert message_ids == ("a@x",)


def test_tokens_come_from_any_recipient_once_each() -> None:
    ours = f"support+{TOKEN}@example.com"
    _, _, tokens, _ = keys(mail(), ["carol@customer.example", ours, ours.upper()])
    assert tokens == (TOKEN,)


def test_the_subject_tag_is_a_key() -> None:
    *_, tag = keys(mail(subject="Re: Printer on fire [#12]"))
    assert tag == 12


def test_an_outlook_thread_index_keys_the_conversation_not_the_reply() -> None:
    header = bytes(range(22))
    first = base64.b64encode(header).decode()
    reply = base64.b64encode(header + b"\x01\x02\x03\x04\x05").decode()  # one child block
    _, started, _, _ = keys(mail(f"Thread-Index: {first}"))
    _, answered, _, _ = keys(mail(f"Thread-Index: {reply}"))
    assert started == answered == header.hex()
    _, short, _, _ = keys(mail("Thread-Index: AAAA"))
    assert short is None  # too short to name a conversation
