"""Outbound hygiene (issue 14 item 7): what customer mail can put into ours is cleaned first.

Attachment names lose directories and bidi tricks as on the way in, Message-IDs that are not
valid are dropped from the threading headers instead of being encoded, and text that is not
plain ASCII goes out with a transfer encoding every relay can carry.
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from mailbridge.outbound.compose import Part, attachments_of, valid_message_id
from tests.outbound_parts import make_draft, make_ticket, make_written


def rendered(
    known: list[str] | None = None, attachments: list[Part] | None = None, **kw: object
) -> tuple[EmailMessage, bytes]:
    """The mail as the sender writes it, bytes as they go to the smarthost."""
    result = make_written(make_ticket(), make_draft(**kw), known or [], attachments)
    assert result is not None
    return result.message, result.raw


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def mail_with_attachment(name: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "carol@customer.example"
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("a\x00b\x07.pdf", "ab.pdf"),
        ("..", "attachment-1"),
    ],
)
def test_attachment_names_are_sanitised_on_the_way_out(name: str, expected: str) -> None:
    parts = attachments_of(mail_with_attachment(name))
    assert [p.filename for p in parts] == [expected]
    _, raw = rendered(attachments=parts)
    sent = message_from_bytes(raw, policy=policy.default)
    assert [a.get_filename() for a in sent.iter_attachments()] == [expected]  # type: ignore[attr-defined]
    assert "\u202e".encode() not in raw and b"../" not in raw


@pytest.mark.parametrize(
    "bad",
    [
        "evil\x01@customer.example",
        "evil\r\nBcc: victim@example.net@customer.example",
        "two words@customer.example",
        "x" * 5000 + "@customer.example",
        "no-at-sign",
        "a<b@customer.example",
        "",
    ],
)
def test_invalid_message_ids_are_dropped_from_threading_headers(bad: str) -> None:
    assert valid_message_id(bad) is None
    _, raw = rendered(known=["first@customer.example", bad], in_reply_to=bad)
    heads = header_lines(raw)
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0]  # nothing encoded into an encoded-word
    assert not any(line.lower().startswith(b"in-reply-to") for line in heads)
    sent = message_from_bytes(raw, policy=policy.default)
    assert sent["References"].split() == ["<first@customer.example>", "<own@example.com>"]
    assert sent["Bcc"] is None
    assert all(len(line) <= 998 for line in heads)


def test_long_valid_message_ids_go_out_unencoded_one_per_line() -> None:
    long_id = "a" * 200 + "@customer.example"
    assert valid_message_id(f"<{long_id}>") == long_id
    _, raw = rendered(known=[long_id, "b@customer.example"], in_reply_to=long_id)
    heads = header_lines(raw)
    assert f"In-Reply-To: <{long_id}>".encode() in heads
    sent = message_from_bytes(raw, policy=policy.default)
    assert sent["References"].split() == [
        f"<{long_id}>",
        "<b@customer.example>",
        "<own@example.com>",
    ]


@pytest.mark.parametrize(
    ("body", "encodings"),
    [
        ("plain ascii\n", {"7bit"}),
        ("a NUL \x00 here\n", {"quoted-printable", "base64"}),
        ("Grüße aus Köln\n", {"quoted-printable", "base64"}),
        ("日本語のテキストです。\n" * 3, {"quoted-printable", "base64"}),
    ],
)
def test_bodies_with_nul_or_8bit_text_get_a_transfer_encoding(
    body: str, encodings: set[str]
) -> None:
    _, raw = rendered(body=body)
    sent = message_from_bytes(raw, policy=policy.default)
    text = sent.get_body(("plain",))
    assert text is not None
    assert text["Content-Transfer-Encoding"] in encodings
    assert raw.isascii() and b"\x00" not in raw  # 7-bit clean on the wire
    assert text.get_content().replace("\r\n", "\n") == body


def test_a_forwarded_message_keeps_a_safe_name() -> None:
    inner = EmailMessage()
    inner["Subject"] = "fwd"
    inner.set_content("inner")
    outer = EmailMessage()
    outer.set_content("see attached")
    outer.add_attachment(inner, filename="../../x\u202egpj.eml")
    parts = attachments_of(outer.as_bytes())
    assert [p.filename for p in parts] == ["xgpj.eml"]
    assert isinstance(parts[0], Part)
