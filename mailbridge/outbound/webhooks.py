"""Signed webhooks (SPEC 9): queued with the event that causes them, posted by the outbox sender.

Queueing happens in `repo.add_events`, the one place events are written, so ingest, ticket
actions and sweeps all get it: each event that a `[[webhooks]]` entry subscribes to becomes an
outbox row of kind `webhook` in the same transaction. `message` is the exception: it is queued
per stored message (`repo.add_message`, `repo.queue_outbound`), inbound and outbound copies
alike, since most messages (a customer's second mail on an open ticket) write no event. A
rolled-back event leaves no row, and a committed one always has its row. The JSON body is built then, so it shows the ticket as it was
at the event, and stored on the row (`raw`); retries post the same bytes.

A webhook row reuses the outbox columns: `mail_from` holds the webhook's name, `rcpt_tos` its URL
at queueing time, `rcpt_key` the delivery id (a UUID, the same on every retry, so receivers can
de-duplicate). The sender claims webhook rows with mail rows (SKIP LOCKED, lease) and hands them
to `Poster`; 2xx is done, 4xx other than 408/429 fails the row with the reply, anything else
(5xx, 408, 429, timeouts, connection errors) is retried with the outbox's backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from mailbridge import __version__
from mailbridge.lifecycle import Kind, Note
from mailbridge.views import iso, ticket_detail

if TYPE_CHECKING:
    from mailbridge.config import Webhook

log = logging.getLogger("mailbridge.webhooks")

KIND = "webhook"  # the outbox row kind
SIGNATURE_HEADER = "X-Mailbridge-Signature"
DELIVERY_HEADER = "X-Mailbridge-Delivery"
EVENT_HEADER = "X-Mailbridge-Event"
RETRIED_4XX = frozenset({408, 429})

# event kinds other than the lifecycle's that stored events carry
_OTHER_KINDS = (
    Note.DELIVERY_FAILED,
    Note.UNAUTHENTICATED_AGENT,
    Note.AUTO_REPLY,
    Note.BOUNCE,
    Note.LOOP,
)


def _changes_status(kind: str, before: str | None, after: str | None) -> bool:
    return bool(before and after and before != after)


# SPEC 9's names, each a predicate over (kind, from_status, to_status). `assign`, `queue` and
# `sla_breach` match the event kinds queues, owners and SLAs (SPEC 7, 8) record once they exist.
_SPEC_NAMES: dict[str, Callable[[str, str | None, str | None], bool]] = {
    "created": lambda kind, _b, _a: kind == Kind.CREATED,
    "status": _changes_status,
    # queued per stored message (`Subscriptions.message_rows`), not per event: many messages
    # (a second customer mail on an open ticket) write no event at all
    "message": lambda _k, _b, _a: False,
    "assign": lambda kind, _b, _a: kind == Note.ASSIGN,
    "queue": lambda kind, _b, _a: kind == Note.QUEUE,
    "sla_breach": lambda kind, _b, _a: kind == Note.SLA_BREACH,
}
# a subscription may also name a stored event kind exactly ("resolve", "delivery-failed", ...)
EVENT_NAMES = frozenset(_SPEC_NAMES) | {k.value for k in Kind} | set(_OTHER_KINDS)


def matches(events: Iterable[str], kind: str, before: str | None, after: str | None) -> bool:
    """Whether a subscription to `events` wants a stored event of `kind` (before -> after)."""
    for name in events:
        test = _SPEC_NAMES.get(name)
        if test(kind, before, after) if test else name == kind:
            return True
    return False


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# --- queueing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """What `repo.add_events` needs to queue webhooks: the entries and the reply-to
    address of a ticket (for the ticket's JSON). Installed on the store's sessions by `App`."""

    hooks: Sequence[Webhook]
    reply_to: Callable[[str, str | None], str]

    def rows(self, ticket: Any, records: Iterable[Any]) -> list[dict[str, Any]]:
        """Outbox rows (as column dicts) for the events in `records` on `ticket`."""
        rows: list[dict[str, Any]] = []
        shape: dict[str, Any] | None = None
        for r in records:
            kind = str(r.kind)
            before = r.from_status and str(r.from_status)
            after = r.to_status and str(r.to_status)
            wanted = [h for h in self.hooks if matches(h.events, kind, before, after)]
            if not wanted:
                continue
            if shape is None:
                shape = ticket_json(ticket, self.reply_to(ticket.token, ticket.queue))
            body = payload(kind, r.at, shape, r.actor, before, after, r.detail)
            rows += [_row(ticket.number, h, body, r.at) for h in wanted]
        return rows

    def message_rows(self, ticket: Any, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """One `message` post per webhook subscribed to it, for each message (column dicts with
        `id`) just stored on `ticket`, inbound or outbound alike."""
        wanted = [h for h in self.hooks if "message" in h.events]
        if not wanted:
            return []
        shape = ticket_json(ticket, self.reply_to(ticket.token, ticket.queue))
        rows: list[dict[str, Any]] = []
        for m in messages:
            detail = {
                "id": m["id"],
                "message_id": m["message_id"],
                "direction": m["direction"],
                "author_kind": m["author_kind"],
                "from": m["from_addr"],
                "actor": m["from_addr"],
                "subject": m["subject"],
            }
            body = {
                "event": "message",
                "at": iso(m["stored_at"]),
                "ticket": shape,
                "detail": detail,
            }
            raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            rows += [_row(ticket.number, h, raw, m["stored_at"]) for h in wanted]
        return rows


def _row(number: int, hook: Webhook, body: bytes, at: Any) -> dict[str, Any]:
    return {
        "ticket_number": number,
        "message_pk": None,  # not an outbound mail: `message raw` must not find it
        "kind": KIND,
        "mail_from": hook.name,
        "rcpt_tos": hook.url,
        "rcpt_key": uuid.uuid4().hex,
        "raw": body,
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": at,
        "created_at": at,
    }


def ticket_json(ticket: Any, reply_to: str) -> dict[str, Any]:
    """`ticket show --json` without messages and events (the event is the payload's own)."""
    shape = ticket_detail(ticket, reply_to, [], [])
    del shape["messages"], shape["events"]
    return shape


def payload(
    kind: str,
    at: Any,
    ticket: dict[str, Any],
    actor: str,
    before: str | None,
    after: str | None,
    note: str | None,
) -> bytes:
    body = {
        "event": kind,
        "at": iso(at),
        "ticket": ticket,
        "detail": {"actor": actor, "from_status": before, "to_status": after, "note": note},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- delivery ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    sent: bool
    error: str | None = None
    permanent: bool = False


class Poster:
    """Posts queued webhook bodies with one reused HTTP client (keep-alive across a batch)."""

    def __init__(self, hooks: Sequence[Webhook]) -> None:
        self.client = httpx.Client(
            follow_redirects=False, headers={"User-Agent": f"mailbridge/{__version__}"}
        )
        self.configure(hooks)

    def configure(self, hooks: Sequence[Webhook]) -> None:
        self.hooks = {h.name: h for h in hooks}
        # the longest one post can take: the sender keeps its claim lease above this
        self.worst = max((h.timeout.total_seconds() for h in hooks), default=0.0)

    def post(self, name: str, body: bytes, delivery_id: str) -> Posted:
        hook = self.hooks.get(name)
        if hook is None:  # removed from the config while the row waited
            return Posted(False, f"webhook {name!r} is no longer configured", permanent=True)
        try:
            event = json.loads(body).get("event", "")
        except ValueError:
            event = ""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(hook.secret.get(), body),
            DELIVERY_HEADER: delivery_id,
            EVENT_HEADER: event,
        }
        try:
            # the configured URL, not the one queued: fixing a wrong URL also fixes waiting rows
            reply = self.client.post(
                hook.url, content=body, headers=headers, timeout=hook.timeout.total_seconds()
            )
        except httpx.HTTPError as exc:
            return Posted(False, f"{hook.url}: {exc.__class__.__name__}: {exc}"[:1000])
        if 200 <= reply.status_code < 300:
            return Posted(True)
        reason = f"HTTP {reply.status_code} {reply.reason_phrase}: {' '.join(reply.text.split())}"
        permanent = 400 <= reply.status_code < 500 and reply.status_code not in RETRIED_4XX
        return Posted(False, reason[:1000], permanent)
