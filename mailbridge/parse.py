"""PURE  raw bytes -> ParsedMessage.

Standard library only. The message is split with `email` in its compat32 policy
(the modern policy is about three times slower) and only the fields mailbridge
needs are decoded here, each defensively: a broken header costs that field, never
the message. `ParseError` is raised only when the bytes are not a mail at all.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email import utils as email_utils
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from functools import lru_cache
from types import MappingProxyType
from typing import TypeVar

from mailbridge.errors import ParseError
from mailbridge.parse_html import html_to_text

__all__ = [
    "CLASSIFY_HEADERS",
    "Address",
    "Attachment",
    "ParsedMessage",
    "decode_header_text",
    "parse",
    "parse_headers_only",
]

CLASSIFY_HEADERS = frozenset(
    {
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "precedence",
        "x-loop",
        "list-id",
        "list-unsubscribe",
        "authentication-results",
        "return-path",
        "x-mailbridge-ticket",
        "x-failed-recipients",
        "x-ms-exchange-generated-message-source",
        "x-spam-flag",
        "thread-topic",
    }
)


@dataclass(frozen=True, slots=True)
class Address:
    name: str  # display name, RFC 2047 decoded; '' if none
    addr: str  # the address as written (stripped); encoded-words are never decoded here


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str  # sanitised; generated from the part's type when the mail names none
    content_type: str
    size: int  # decoded payload bytes


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_index: str | None
    subject: str
    from_: Address | None
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    content_type: str
    report_type: str | None
    headers: Mapping[str, tuple[str, ...]]
    body_text: str
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]


# --------------------------------------------------------------------------- entry points


def parse(raw: bytes) -> ParsedMessage:
    """Parse a whole message. Raises ParseError only when `raw` is not a mail at all."""
    data, defects = _prepare(raw)
    msg = BytesParser(policy=compat32).parsebytes(data)
    from mailbridge.parse_mime import extract_body_and_attachments

    body, attachments = _guard(
        lambda: extract_body_and_attachments(msg, defects), ("", ()), defects, "body"
    )
    return _build(msg, defects, body, attachments)


def parse_headers_only(raw: bytes) -> ParsedMessage:
    """Everything but `body_text` and `attachments` (left empty), without parsing MIME parts."""
    data, defects = _prepare(raw)
    msg = BytesHeaderParser(policy=compat32).parsebytes(data)
    return _build(msg, defects, "", ())
