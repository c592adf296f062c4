"""mailbridge.parse: the corpus, focused cases with small inline messages, and fuzzing."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.errors import ParseError
from mailbridge.parse import (
    CLASSIFY_HEADERS,
    Address,
    Attachment,
    ParsedMessage,
    decode_header_text,
    parse,
    parse_headers_only,
)

_DEFAULT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CORPUS = Path(os.environ.get("MAILBRIDGE_CORPUS", _DEFAULT_CORPUS))
CORPUS_FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []
# Not a mail: an Outlook .msg (OLE2 compound file) saved with an .eml name.
NOT_MAIL = {"spamscope-mail-parser/mail_outlook_1.eml"}
needs_corpus = pytest.mark.skipif(not CORPUS_FILES, reason=f"corpus not found at {CORPUS}")
if not CORPUS_FILES:
    print(f"corpus not found at {CORPUS} (set MAILBRIDGE_CORPUS): corpus tests skipped")


def msg(*lines: str, body: str = "body\n") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def assert_clean_text(parsed: ParsedMessage) -> None:
    """Every string must be storable: valid Unicode, no lone surrogates."""
    texts = [parsed.subject, parsed.body_text, parsed.content_type, *parsed.defects]
    mailboxes = [a for a in (parsed.from_, parsed.sender) if a]
    texts += [x for a in mailboxes for x in (a.name, a.addr)]
    texts += [x for a in parsed.to + parsed.cc + parsed.reply_to for x in (a.name, a.addr)]
    texts += [a.filename for a in parsed.attachments] + [
        v for vs in parsed.headers.values() for v in vs
    ]
    texts += [*parsed.in_reply_to, *parsed.references, parsed.message_id or ""]
    for text in texts:
        text.encode("utf-8")
    assert parsed.date is None or parsed.date.tzinfo is UTC


# ---------------------------------------------------------------------------- the corpus


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_file_parses(path: Path) -> None:
    raw = path.read_bytes()
    name = f"{path.parent.name}/{path.name}"
    if name in NOT_MAIL:
        with pytest.raises(ParseError):
            parse(raw)
        return
    parsed = parse(raw)
    assert isinstance(parsed, ParsedMessage)
    assert_clean_text(parsed)
    assert all(isinstance(a, Attachment) and a.size >= 0 and a.filename for a in parsed.attachments)
    assert set(parsed.headers) <= CLASSIFY_HEADERS
    assert not [d for d in parsed.defects if d.startswith("FieldError")]
    headers_only = parse_headers_only(raw)
    for field in ("message_id", "subject", "from_", "to", "date", "references", "headers"):
        assert getattr(headers_only, field) == getattr(parsed, field), field
    assert headers_only.body_text == "" and headers_only.attachments == ()


# ---------------------------------------------------------------------------- headers


def test_rfc2047_subject_joins_adjacent_words_and_keeps_plain_text() -> None:
    raw = msg(
        "From: a@example.com",
        "Subject: Re: =?utf-8?B?w6TDtsO8?= =?UTF-8?Q?_und_=C3=9F?= plain",
        " =?iso-8859-1?q?Gr=FC=DFe?=",
    )
    assert parse(raw).subject == "Re: äöü und ß plain Grüße"


def test_rfc2047_multibyte_character_split_across_words() -> None:
    euro = "€".encode()
    first, second = base64.b64encode(euro[:1]).decode(), base64.b64encode(euro[1:]).decode()
    assert decode_header_text(f"=?utf-8?B?{first}?= =?utf-8?B?{second}?=") == "€"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("=?iso-gb2312?B?1tDOxA==?=", "中文"),
        ("=?ks_c_5601-1987?B?wcG+xiC/5A==?=", "좋아 요"),
        ("=?x-unknown?Q?caf=C3=A9?=", "café"),
        ("=?windows-1251?B?z/Do4uXy?=", "Привет"),
        ("=?bogus-charset?Q?caf=E9?=", "café"),
        ("=?utf-8?Q?broken_=ZZ?=", "broken =ZZ"),
        ("=?iso-2022-jp?B?GyRCLSEbKEI=?=", "①"),  # Microsoft ISO-2022-JP (NEC extension)
        ("=?ISO-2022-JP?B?g2OBW4OL?=", "ツール"),  # Shift_JIS bytes under an ISO-2022-JP label
    ],
)
def test_encoded_word_charsets_and_fallbacks(header: str, expected: str) -> None:
    assert decode_header_text(header) == expected


def test_raw_8bit_header_bytes_utf8_then_windows_1252() -> None:
    raw = b"From: J\xc3\xbcrgen <j@example.com>\r\nSubject: Caf\xe9\r\n\r\nx"
    parsed = parse(raw)
    assert parsed.from_ == Address("Jürgen", "j@example.com")
    assert parsed.subject == "Café"


def test_display_names() -> None:
    parsed = parse(
        msg(
            'From: "Smith, John" <John.Smith@Example.com>',
            "To: =?iso-8859-1?Q?B=FCrling,=20Andreas?= <ab@example.com>, plain@example.com,",
            " 'Outlook Quoted' <oq@example.com>",
            "Cc: undisclosed-recipients:;",
            "Reply-To: <reply@example.com>",
            "Sender: =?utf-8?B?U3VwcG9ydCBUZWFt?= <team@example.com>",
        )
    )
    assert parsed.from_ == Address("Smith, John", "John.Smith@Example.com")
    assert parsed.to == (
        Address("Bürling, Andreas", "ab@example.com"),
        Address("", "plain@example.com"),
        Address("Outlook Quoted", "oq@example.com"),
    )
    assert parsed.cc == ()
    assert parsed.reply_to == (Address("", "reply@example.com"),)
    assert parsed.sender == Address("Support Team", "team@example.com")


def test_encoded_word_in_address_is_kept_as_written() -> None:
    parsed = parse(msg("From: =?utf-8?Q?agent?=@example.com", "Subject: x"))
    assert parsed.from_ == Address("", "=?utf-8?Q?agent?=@example.com")
    assert "EncodedWordInAddress" in parsed.defects


def test_repeated_from_takes_the_first_usable_mailbox() -> None:
    parsed = parse(msg("From: [??????]", "From: Real <real@example.com>"))
    assert parsed.from_ == Address("Real", "real@example.com")


def test_message_ids_are_normalised() -> None:
    parsed = parse(
        msg(
            "Message-ID:   <abc@example.com>  ",
            "In-Reply-To: <parent@example.com> (Jane's message of Monday)",
            "References: <root@example.com>",
            "\t<mid@exa",
            " mple.com> <parent@example.com> <root@example.com>",
        )
    )
    assert parsed.message_id == "abc@example.com"
    assert parsed.in_reply_to == ("parent@example.com",)
    assert parsed.references == ("root@example.com", "mid@example.com", "parent@example.com")


def test_message_id_without_brackets_and_missing() -> None:
    assert parse(msg("Message-Id: 2020.05D7@example.com")).message_id == "2020.05D7@example.com"
    assert parse(msg("Message-ID: ", "Subject: x")).message_id is None
    assert parse(msg("Subject: x")).message_id is None


def test_thread_index_conversation_id() -> None:
    index = bytes(range(1, 28))  # 22-byte header + one 5-byte child block
    parsed = parse(msg(f"Thread-Index: {base64.b64encode(index).decode()}"))
    assert parsed.thread_index == index[:22].hex()
    assert parse(msg("Thread-Index: AQHS")).thread_index is None  # too short
    assert parse(msg("Thread-Index: not base64 !!")).thread_index is None
    assert parse(msg("Subject: x")).thread_index is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Date: Fri, 07 Apr 2023 17:30:44 +0200", datetime(2023, 4, 7, 15, 30, 44, tzinfo=UTC)),
        ("Date: 7 Apr 2023 17:30:44 GMT (comment)", datetime(2023, 4, 7, 17, 30, 44, tzinfo=UTC)),
        (
            "Date: Fri, 07 Apr 2023 17:30:44 +0200Received: from x (x [1.1.1.1])",
            datetime(2023, 4, 7, 15, 30, 44, tzinfo=UTC),
        ),
        ("Date: Sun, 01 Jan 2017 27:10:00 +0000", None),
        ("Date: yesterday", None),
        ("Subject: no date at all", None),
    ],
)
def test_date(header: str, expected: datetime | None) -> None:
    assert parse(msg(header)).date == expected


def test_headers_hold_only_the_classify_set_decoded_in_order() -> None:
    parsed = parse(
        msg(
            "Received: from a by b",
            "Auto-Submitted: auto-replied",
            "X-Loop: one",
            "X-LOOP: =?utf-8?Q?tw=C3=B6?=",
            "List-Id: Some list",
            " <list.example.com>",
            "X-Mailer: whatever",
            "Return-Path: <>",
        )
    )
    assert dict(parsed.headers) == {
        "auto-submitted": ("auto-replied",),
        "x-loop": ("one", "twö"),
        "list-id": ("Some list <list.example.com>",),
        "return-path": ("<>",),
    }
    assert set(parsed.headers) <= CLASSIFY_HEADERS


# ---------------------------------------------------------------------------- framing


def test_mbox_from_line_and_leading_whitespace_are_skipped() -> None:
    raw = b"   \r\n\r\nFrom someone@example.com  Tue Oct 29 03:52:03 2013\nSubject: hi\nFrom: a@b.example\n\nx"
    parsed = parse(raw)
    assert parsed.subject == "hi"
    assert parsed.from_ == Address("", "a@b.example")


def test_junk_line_before_headers_and_lost_folding_are_repaired() -> None:
    raw = (
        b"---- Original email message ----\n"
        b"Received: from a (a [1.1.1.1]) by\n"
        b"b.example.com with ESMTP; Wed, 5 Apr 2017 09:45:23 +0200\n"
        b"From: Real <real@example.com>\n"
        b"Subject: kept\n\nbody"
    )
    parsed = parse(raw)
    assert parsed.from_ == Address("Real", "real@example.com")
    assert parsed.subject == "kept"
    assert parsed.body_text == "body"
    assert {"LeadingJunkSkipped", "HeaderFoldingRepaired"} <= set(parsed.defects)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \r\n\t\n",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 4,
        b"just some text\n\nmore",
    ],
)
def test_not_a_mail_raises_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse(raw)
    with pytest.raises(ParseError):
        parse_headers_only(raw)


# ---------------------------------------------------------------------------- body


def test_html_only_body_becomes_text() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<script>alert(1)</script><p>Hello&nbsp;<b>World</b> &amp; co.</p>"
        "<div>line one<br>line   two</div><!-- hidden --><ul><li>a</li><li>b</li></ul></body></html>"
    )
    parsed = parse(msg("Content-Type: text/html; charset=utf-8", body=html))
    assert parsed.body_text == "Hello World & co.\n\nline one\nline two\n\na\nb"


def test_alternative_prefers_plain_and_skips_an_empty_plain() -> None:
    def alternative(plain: str) -> bytes:
        return msg(
            'Content-Type: multipart/alternative; boundary="b"',
            body=(
                f"--b\r\nContent-Type: text/plain\r\n\r\n{plain}\r\n"
                "--b\r\nContent-Type: text/html\r\n\r\n<p>from html</p>\r\n--b--\r\n"
            ),
        )

    assert parse(alternative("from plain")).body_text == "from plain"
    assert parse(alternative("  ")).body_text == "from html"
    assert parse(alternative("from plain")).attachments == ()


def test_body_charsets_and_odd_transfer_encodings() -> None:
    raw = msg(
        "Content-Type: text/plain; charset=ks_c_5601-1987",
        "Content-Transfer-Encoding: 8bits",
        body="",
    ) + "Привет".encode("cp949")
    assert parse(raw).body_text == "Привет"
    qp = msg(
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding:  Quoted-Printable ",
        body="Gr=FC=DFe=\r\n aus K=F6ln",
    )
    assert parse(qp).body_text == "Grüße aus Köln"


def test_uuencoded_block_in_text_becomes_an_attachment() -> None:
    raw = msg(
        "Subject: uu", body="see attached\r\n\r\nbegin 644 hello.txt\r\n%:&5L;&\\*\r\n`\r\nend\r\n"
    )
    parsed = parse(raw)
    assert parsed.body_text == "see attached"
    assert parsed.attachments == (Attachment("hello.txt", "text/plain", 5),)


# ---------------------------------------------------------------------------- attachments


def mixed(*parts: str) -> bytes:
    body = "".join(f"--XX\r\n{part}\r\n" for part in parts) + "--XX--\r\n"
    return msg('Content-Type: multipart/mixed; boundary="XX"', body=body)


def test_attachment_names_are_sanitised() -> None:
    parsed = parse(
        mixed(
            "Content-Type: text/plain\r\n\r\nbody",
            'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="../../etc/passwd"\r\n\r\nx',
            'Content-Type: application/octet-stream; name="..\\\\..\\\\boot.ini"\r\n\r\nx',
            "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''%E2%80%AEfdp.exe\r\n\r\nx",
            'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="=?utf-8?Q?Erkl=C3=A4rung.pdf?="\r\n\r\nx',
            'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=".."\r\n\r\nx',
        )
    )
    assert parsed.body_text == "body"
    assert [a.filename for a in parsed.attachments] == [
        "passwd",
        "boot.ini",
        "fdp.exe",
        "Erklärung.pdf",
        "attachment.pdf",
    ]


def test_generated_names_sizes_and_inline_images() -> None:
    png = base64.b64encode(b"\x89PNG" + bytes(100)).decode()
    parsed = parse(
        msg(
            'Content-Type: multipart/related; boundary="R"',
            body=(
                "--R\r\nContent-Type: text/html\r\n\r\n<img src=cid:logo.png@x>\r\n"
                f"--R\r\nContent-Type: image/png\r\nContent-ID: <logo.png@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n{png}\r\n"
                f"--R\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n{png}\r\n"
                f"--R\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n{png[:-2]}\r\n"
                "--R--\r\n"
            ),
        )
    )
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("logo.png", "image/png", 104),
        ("image.jpg", "image/jpeg", 104),
        ("image1.jpg", "image/jpeg", 103),
    ]


def test_attached_message_is_one_attachment_named_after_its_subject() -> None:
    inner = "Subject: Quarterly report: Q1/Q2\r\nFrom: x@example.com\r\n\r\ninner body\r\n"
    parsed = parse(
        mixed(
            "Content-Type: text/plain\r\n\r\nsee below",
            f"Content-Type: message/rfc822\r\n\r\n{inner}",
        )
    )
    assert parsed.body_text == "see below"
    [attachment] = parsed.attachments
    assert attachment.filename == "Quarterly report: Q1_Q2.eml"
    assert attachment.content_type == "message/rfc822"
    assert abs(attachment.size - len(inner)) <= 8


def test_delivery_status_report() -> None:
    parsed = parse(
        msg(
            "From: MAILER-DAEMON@example.com (Mail Delivery System)",
            "Return-Path: <>",
            'Content-Type: multipart/report; report-type="Delivery-Status"; boundary="D"',
            body=(
                "--D\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
                "--D\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
                "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                "--D\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: original\r\n"
                "--D--\r\n"
            ),
        )
    )
    assert parsed.content_type == "multipart/report"
    assert parsed.report_type == "delivery-status"
    assert parsed.from_ == Address("Mail Delivery System", "MAILER-DAEMON@example.com")
    assert parsed.headers["return-path"] == ("<>",)
    assert parsed.body_text == "Your message could not be delivered."
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("delivery-status.txt", "message/delivery-status"),
        ("document.txt", "text/rfc822-headers"),
    ]


# ---------------------------------------------------------------------------- fuzzing

_SEED_NAMES = [
    "zammad/mail014.eml",
    "zammad/mail092.eml",
    "zammad/mail046.eml",
    "cpython/msg_15.eml",
    "mikel-mail/error_emails__content_transfer_encoding_x_uuencode.eml",
    "flanker/spam__broken-headers.eml",
]
SEEDS = [
    mixed(
        "Content-Type: text/plain; charset=utf-8\r\n\r\nhello",
        'Content-Type: image/png; name="a.png"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=',
    ),
    msg(
        "From: =?utf-8?B?w6Q=?= <a@b.c>",
        "Subject: =?ks_c_5601-1987?B?wcG+xg==?=",
        "Date: Sun, 8 Mar 2026 13:31:07 +0000",
    ),
] + [(CORPUS / name).read_bytes()[:60_000] for name in _SEED_NAMES if (CORPUS / name).is_file()]


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(
            st.sampled_from(
                ["truncate", "flip", "duplicate", "fold", "boundary", "charset", "insert"]
            )
        )
        end = max(len(raw), 1)
        if kind == "truncate":
            raw = raw[: data.draw(st.integers(0, end))]
        elif kind == "flip" and raw:
            at = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
        elif kind == "duplicate":
            lines = raw.split(b"\n")
            at = data.draw(st.integers(0, len(lines) - 1))
            raw = b"\n".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])
        elif kind == "fold":
            at = data.draw(st.integers(0, min(end, 2000)))
            raw = (
                raw[:at]
                + data.draw(st.sampled_from([b"\r\n ", b"\n\t", b"\r\n", b"\n\n"]))
                + raw[at:]
            )
        elif kind == "boundary":
            raw = raw.replace(
                b"--",
                data.draw(st.sampled_from([b"-", b"---", b"--x", b""])),
                data.draw(st.integers(1, 3)),
            )
        elif kind == "charset":
            bogus = data.draw(
                st.sampled_from(
                    [
                        b"x-unknown",
                        b"utf-16",
                        b"rot13",
                        b"base64",
                        b"idna",
                        b"\xff\xfe",
                        b"utf-7",
                        b"undefined",
                        b"",
                    ]
                )
            )
            raw = raw.replace(b"charset=", b"charset=" + bogus + b"x", 2).replace(
                b"?utf-8?", b"?" + bogus + b"?"
            )
        elif kind == "insert":
            at = data.draw(st.integers(0, end))
            raw = raw[:at] + data.draw(st.binary(max_size=64)) + raw[at:]
    return raw


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_mutated_mail_parses_or_raises_parse_error(seed: bytes, data: st.DataObject) -> None:
    raw = _mutate(seed, data)
    for parser in (parse, parse_headers_only):
        try:
            parsed = parser(raw)
        except ParseError:
            continue
        assert isinstance(parsed, ParsedMessage)
        assert_clean_text(parsed)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_parse_or_raise_parse_error(raw: bytes) -> None:
    try:
        assert_clean_text(parse(b"Subject: x\r\n" + raw))
        parse(raw)
    except ParseError:
        pass
