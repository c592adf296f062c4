"""Writes an outgoing mail's MIME bytes (`write`) from the `Pending` decided when it was queued
(see `mailbridge.outbound`). Everything here is pure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from typing import Any

from mailbridge.mailtext import header_safe
from mailbridge.parse.attachment_names import sanitize_filename

log = logging.getLogger("mailbridge.outbound")

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
MAX_REFERENCES = 20
# RFC 5322 3.6.4 msg-id: printable ASCII without space or angle brackets, one "@". Bounded so
# that "In-Reply-To: <id>" stays one line: a longer id would be folded into encoded-words.
MAX_MESSAGE_ID = 250
_MSG_ID = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")
# Raw header strings (our threading headers, written pre-folded) go out as they are: the email
# package would otherwise turn a long id into encoded-words. Header objects fold as before.
SMTP = policy.SMTP.clone(refold_source="none")
SMTPUTF8 = policy.SMTPUTF8.clone(refold_source="none")
Box = tuple[str, str, str]  # display name, local part, domain: an Address, as JSON can hold it


# --- threading headers ---------------------------------------------------------------------


def conversation_id(token: str, created: datetime) -> bytes:
    """Outlook's 22-byte Thread-Index header block for a ticket: 6 bytes of FILETIME, 16 of id.

    The id is derived from the ticket token, so it is stable and unguessable like the token.
    """
    stamp = int((created - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    return (
        stamp.to_bytes(8, "big")[:6]
        + hashlib.sha256(b"thread-index\0" + token.encode()).digest()[:16]
    )


def thread_index(conversation: bytes, now: datetime) -> str:
    """A Thread-Index header value: the conversation block plus one 5-byte child block.

    The child (MS-OXOMSG 2.2.1.3) holds the time since the conversation began, so Outlook
    orders our mail after the message it answers; the last byte is random.
    """
    start = int.from_bytes(conversation[:6] + b"\0\0", "big")
    delta = max(0, int((now - _FILETIME_EPOCH).total_seconds() * 10_000_000) - start)
    code, value = (0, delta >> 18) if delta < 1 << 49 else (1, delta >> 23)
    child = ((code << 39) | ((value & 0x7FFFFFFF) << 8) | secrets.randbelow(256)).to_bytes(5, "big")
    return base64.b64encode(conversation + child).decode("ascii")


def valid_message_id(value: str | None) -> str | None:
    """The id without its angle brackets when it may go into In-Reply-To/References, else None.

    Ids come from customers' mail: control characters, spaces or a 5,000-character id must not
    reach a header (nor be encoded into one): such an id is dropped, not repaired."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if len(value) > MAX_MESSAGE_ID or not _MSG_ID.fullmatch(value):
        return None
    return value


def trim_references(ids: Sequence[str]) -> list[str]:
    """RFC 5322 3.6.4: keep the thread's first id and the most recent ones; invalid ids dropped."""
    ids = list(dict.fromkeys(v for i in ids if (v := valid_message_id(i))))
    if len(ids) <= MAX_REFERENCES:
        return ids
    return [ids[0], *ids[-(MAX_REFERENCES - 1) :]]


# --- attachments ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """An attachment to carry over: bytes and how to label them."""

    data: bytes | EmailMessage
    content_type: str
    filename: str


def attachments_of(raw: bytes) -> list[Part]:
    """The attachments of a stored message, to re-attach to a notification or relay."""
    if _plain_text(raw):
        return []
    found: list[Part] = []

    def visit(part: Any) -> None:
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                _sanitise_names(inner[0])
                found.append(Part(inner[0], ctype, _safe_name(part.get_filename(), "message.eml")))
            return
        if part.is_multipart():
            for sub in part.get_payload():
                visit(sub)
            return
        filename = part.get_filename()
        if ctype in ("text/plain", "text/html") and not filename and not part.is_attachment():
            return  # a body part: its text is in the mail we write
        data = part.get_payload(decode=True) or b""
        found.append(Part(data, ctype, _safe_name(filename, f"attachment-{len(found) + 1}")))

    try:
        visit(message_from_bytes(raw, policy=policy.default))
    except Exception:  # a MIME structure the email package chokes on: notify without them
        log.warning("cannot take the attachments out of a message", exc_info=True)
    return found


def _plain_text(raw: bytes) -> bool:
    """Whether a message is one text part that `attachments_of` would find nothing in, read from
    its header block alone: most mail is, and parsing it whole costs a notification more than
    writing it. Anything less plain is parsed whole."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    fields = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    types = fields.get_all("content-type") or []
    if len(types) > 1 or "content-disposition" in fields or "name" in str(types).lower():
        return False
    return fields.get_content_type() in ("text/plain", "text/html")


def _sanitise_names(msg: Any) -> None:
    """A forwarded message goes out whole, so its own parts' names get the same rules: mail
    clients list and save them like any other attachment."""
    for sub in msg.walk():
        name = sub.get_filename()
        if not name:
            continue
        safe = _safe_name(name, "attachment")
        for header, param in (("content-disposition", "filename"), ("content-type", "name")):
            if sub.get_param(param, header=header) is not None:
                sub.del_param(param, header=header)
                sub.set_param(param, safe, header=header)


def _safe_name(name: str | None, default: str) -> str:
    """The inbound rules on the way out: no directories, control or bidi characters."""
    return header_safe(sanitize_filename(name or ""), 255) or default


# --- the queued mail -----------------------------------------------------------------------


def box_of(address: Address) -> Box:
    return (address.display_name, address.username, address.domain)


@dataclass(slots=True)
class Pending:
    """A queued mail, decided but not yet written: every header value is final here."""

    kind: str
    ticket: int
    message_id: str
    at: datetime  # when it was queued: its Date, and the time in its Thread-Index
    from_address: str
    from_name: str
    to: list[Box]
    subject: str
    reply_name: str
    reply_to: str
    topic: str  # Thread-Topic: the ticket's subject
    conversation: str  # hex of the ticket's 22-byte Thread-Index conversation block
    loop: str  # X-Loop
    body: str
    in_reply_to: str | None = None
    auto_submitted: str | None = None
    cc: list[Box] = field(default_factory=list)
    attach_pk: int | None = None  # the stored message whose attachments go along

    def to_json(self) -> str:
        values = {name: getattr(self, name) for name in _FIELDS}
        values["at"] = self.at.isoformat()
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Pending:
        values: dict[str, Any] = json.loads(text)
        values["at"] = datetime.fromisoformat(values["at"])
        values["to"] = [tuple(b) for b in values["to"]]
        values["cc"] = [tuple(b) for b in values.get("cc", [])]
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(Pending))


@dataclass(slots=True)
class Written:
    """A mail as it goes out; `body` and `attachments` as sent (the fallback may drop them)."""

    message: EmailMessage
    raw: bytes
    subject: str
    body: str
    attachments: list[Part]


def compose(p: Pending, known: Sequence[str], parts: Sequence[Part]) -> EmailMessage:
    """The mail with every header of SPEC section 2; `known` are the ticket's Message-IDs.

    Our own Message-ID ends our References, so a reply still threads when a relay on the
    way rewrote the Message-ID header.
    """
    msg = EmailMessage(policy=SMTPUTF8 if needs_smtputf8(p) else SMTP)
    msg["From"] = Address(p.from_name, addr_spec=p.from_address)
    msg["To"] = [Address(n, u, d) for n, u, d in p.to]
    if p.cc:
        msg["Cc"] = [Address(n, u, d) for n, u, d in p.cc]
    msg["Reply-To"] = Address(p.reply_name, addr_spec=p.reply_to)
    msg["Subject"] = p.subject
    msg["Date"] = format_datetime(p.at.astimezone(UTC))
    msg["Message-ID"] = f"<{p.message_id}>"
    references = trim_references([*known, p.message_id])
    in_reply_to = valid_message_id(p.in_reply_to)
    if in_reply_to:
        msg.set_raw("In-Reply-To", f"<{in_reply_to}>")
    # one id per line: every line stays short whatever the ids' lengths
    msg.set_raw("References", "\r\n ".join(f"<{r}>" for r in references))
    msg["Thread-Index"] = thread_index(bytes.fromhex(p.conversation), p.at)
    msg["Thread-Topic"] = p.topic
    if p.auto_submitted:
        msg["Auto-Submitted"] = p.auto_submitted
        # Exchange and friends: do not answer this with out-of-office replies
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = p.loop
    msg["X-Mailbridge-Ticket"] = str(p.ticket)
    # a lone surrogate (undecodable bytes in the source mail) cannot be encoded: replace it
    body = p.body.encode("utf-8", "replace").decode("utf-8")
    msg.set_content(body, cte=body_encoding(body))
    for part in parts:
        _attach(msg, part)
    return msg


def body_encoding(body: str) -> str | None:
    """A transfer encoding for text with NUL or 8-bit characters; None (7bit) for plain ASCII.

    The email package would send NUL as 7bit and UTF-8 as 8bit; neither survives every relay."""
    if body.isascii() and "\x00" not in body:
        return None
    mostly_ascii = sum(not c.isascii() for c in body) * 4 < len(body)
    return "quoted-printable" if mostly_ascii else "base64"


def needs_smtputf8(p: Pending) -> bool:
    """A recipient's address that only SMTPUTF8 can carry (RFC 6531)."""
    return any(not (local + domain).isascii() for _, local, domain in (*p.to, *p.cc))


def write(p: Pending, known: Sequence[str], parts: Sequence[Part]) -> Written | None:
    """Build and serialise; a part the email package cannot write costs the attachments,
    and at worst this one mail, never anything else."""
    parts = list(parts)
    for attempt in range(2):
        try:
            msg = compose(p, known, parts)
            raw = msg.as_bytes(policy=msg.policy)
            return Written(msg, raw, str(msg["Subject"]), p.body, parts)
        except Exception:
            log.exception("ticket #%s: cannot write the %s mail", p.ticket, p.kind)
            if attempt or not parts:
                return None
            note = f"(The attachments could not be copied; they are on ticket #{p.ticket}.)"
            parts, p.body = [], f"{p.body.rstrip()}\n\n{note}\n"
    return None


def _attach(msg: EmailMessage, part: Part) -> None:
    if isinstance(part.data, EmailMessage) or not isinstance(part.data, bytes):
        msg.add_attachment(part.data, filename=part.filename)
        return
    maintype, _, subtype = part.content_type.partition("/")
    msg.add_attachment(
        part.data,
        maintype=maintype or "application",
        subtype=subtype or "octet-stream",
        filename=part.filename,
    )


def size_of(part: Part) -> int:
    return len(part.data) if isinstance(part.data, bytes) else len(part.data.as_bytes())
