"""Content hashes that survive re-delivery: what each hop adds and line endings do not change the
hash; anything the author wrote does."""

from __future__ import annotations

from mailbridge.fingerprint import content_hash, dedup_key

MAIL = (
    b"From: Carol <carol@customer.example>\n"
    b"To: support@example.com\n"
    b"Subject: Printer on fire\n"
    b"Message-ID: <1@customer.example>\n"
    b"\n"
    b"Hello,\n"
    b"the printer is on fire.\n"
)

REDELIVERED = (
    b"Return-Path: <carol@customer.example>\r\n"
    b"Delivered-To: support@example.com\r\n"
    b"Received: from mx.example.com by imap.example.com;\r\n"
    b"\tMon, 2 Nov 2026 08:00:05 +0000\r\n"
    b"Authentication-Results: mx.example.com; dkim=pass header.d=customer.example\r\n"
    + MAIL.replace(b"\n", b"\r\n")
)


def test_the_same_mail_re_delivered_with_trace_headers_and_crlf_hashes_alike() -> None:
    assert content_hash(REDELIVERED) == content_hash(MAIL)


def test_an_mbox_from_line_and_trailing_blank_lines_do_not_count() -> None:
    assert content_hash(b"From carol@customer.example Mon Nov  2 08:00:00 2026\n" + MAIL) == (
        content_hash(MAIL)
    )
    assert content_hash(MAIL + b"\n\n") == content_hash(MAIL)


def test_a_changed_body_hashes_differently() -> None:
    changed = MAIL.replace(b"on fire", b"on fire again")
    assert content_hash(changed) != content_hash(MAIL)
    # even re-delivered, the author's change shows
    assert content_hash(REDELIVERED.replace(b"on fire", b"on fire again")) != content_hash(MAIL)


def test_a_changed_author_header_hashes_differently() -> None:
    assert content_hash(MAIL.replace(b"Printer on fire", b"Printer fixed")) != content_hash(MAIL)
    added = MAIL.replace(b"\n\n", b"\nCc: dan@customer.example\n\n", 1)
    assert content_hash(added) != content_hash(MAIL)


def test_a_header_only_mail_hashes() -> None:
    head = b"From: carol@customer.example\nSubject: empty\n"
    assert content_hash(head) == content_hash(head.replace(b"\n", b"\r\n"))
    assert content_hash(head) != content_hash(head + b"\nbody\n")


def test_the_dedup_key_joins_the_message_id_and_the_content() -> None:
    content = content_hash(MAIL)
    assert dedup_key("1@customer.example", content) == dedup_key("1@customer.example", content)
    assert dedup_key("1@customer.example", content) != dedup_key("2@customer.example", content)
    assert dedup_key(None, content) == dedup_key("", content)
    assert dedup_key(None, content) != dedup_key(None, content_hash(MAIL + b"P.S.\n"))
