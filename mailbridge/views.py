"""The JSON shapes of SPEC section 5, and their human renderings. Pure functions of stored rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailbridge.storage.models import Event, Message, Quarantine, Ticket


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ticket_summary(
    ticket: Ticket, message_count: int, tags: list[str] | None = None
) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "status": ticket.status,
        "subject": ticket.subject,
        "customer": ticket.customer,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "message_count": message_count,
        **ownership_view(ticket, tags),
    }


def ownership_view(ticket: Ticket, tags: list[str] | None) -> dict[str, Any]:
    """SPEC 7's fields of a ticket: queue, owner (or null), priority, tags (sorted)."""
    return {
        "queue": ticket.queue,
        "owner": ticket.owner,
        "priority": ticket.priority,
        "tags": sorted(tags or ()),
    }


def message_view(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "message_id": m.message_id,
        "direction": m.direction,
        "author_kind": m.author_kind,
        "from": m.from_addr,
        "to": [a for a in m.to_addrs.split(", ") if a],
        "subject": m.subject,
        "date": iso(m.date),
        "stored_at": iso(m.stored_at),
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in m.attachments
        ],
    }


def event_view(e: Event) -> dict[str, Any]:
    return {
        "at": iso(e.at),
        "kind": e.kind,
        "actor": e.actor,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "detail": e.detail,
    }


def ticket_detail(
    ticket: Ticket,
    reply_to: str,
    messages: list[Message],
    events: list[Event],
    tags: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "status": ticket.status,
        "subject": ticket.subject,
        "customer": ticket.customer,
        "reply_to": reply_to,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "postponed_until": iso(ticket.postponed_until),
        "follow_up_of": ticket.follow_up_of,
        **ownership_view(ticket, tags),
        "messages": [message_view(m) for m in messages],
        "events": [event_view(e) for e in events],
    }


def sla_view(ticket: Ticket, clock: Any, name: str | None) -> dict[str, Any] | None:
    """`ticket show`'s `sla` (SPEC 8): due times from the ticket's history (`sweeps.sla_clock`);
    `breached` the targets the sweep recorded (what `tickets --breached` lists too)."""
    if clock is None:
        return None
    # next_response@<start>: which wait was missed; shown by target name
    recorded = sorted({t.partition("@")[0] for t in (ticket.sla_breached or "").split(",") if t})

    def due(target: str) -> str | None:
        found = clock.target(target)
        return iso(found.due) if found else None

    return {
        "name": name,
        "first_response_due": due("first_response"),
        "next_response_due": due("next_response"),
        "resolution_due": due("resolution"),
        "breached": recorded,
    }


def quarantine_view(q: Quarantine) -> dict[str, Any]:
    return {
        "id": q.id,
        "kind": q.kind,
        "state": q.state,
        "reason": q.reason,
        "source": q.source,
        "sender": q.sender,
        "message_id": q.message_id,
        "size": q.size,
        "created_at": iso(q.created_at),
        "released_at": iso(q.released_at),
    }


def thread_lines(
    ticket: Ticket, reply_to: str, messages: list[Message], events: list[Event]
) -> list[str]:
    """`ticket show` for people: the header, then messages and events interleaved by time."""
    lines = [
        f"Ticket #{ticket.number}  [{ticket.status}]  {ticket.subject}",
        f"  customer:  {ticket.customer_name + ' ' if ticket.customer_name else ''}<{ticket.customer}>",
        f"  reply-to:  {reply_to}",
        f"  created:   {iso(ticket.created_at)}   updated: {iso(ticket.updated_at)}",
    ]
    if ticket.postponed_until:
        lines.append(f"  postponed until {iso(ticket.postponed_until)}")
    if ticket.follow_up_of:
        lines.append(f"  follow-up of #{ticket.follow_up_of}")
    lines.append(
        f"  queue:     {ticket.queue}   owner: {ticket.owner or '(none)'}   priority: {ticket.priority}"
    )
    lines.append("")
    items: list[tuple[datetime, int, str]] = []
    for m in messages:
        arrow = "->" if m.direction == "outbound" else "<-"
        head = f"{iso(m.stored_at)}  {arrow} message {m.id} ({m.author_kind}) from {m.from_addr}: {m.subject}"
        extra = [
            f"      attachment: {a.filename} ({a.content_type}, {a.size} bytes)"
            for a in m.attachments
        ]
        if m.verdict:
            extra.insert(0, f"      why: {m.verdict}")
        items.append((m.stored_at, 0, "\n".join([head, *extra])))
    verdicts = {m.id: m.verdict for m in messages}
    for e in events:
        change = f"{e.from_status or '-'} -> {e.to_status or '-'}"
        line = f"{iso(e.at)}  ** {e.kind}: {change} by {e.actor}"
        if e.detail and (e.message_pk is None or e.detail != verdicts.get(e.message_pk)):
            # why a delivery failed, which rule acted (unless its message says so already)
            line += "\n" + "\n".join(f"      {part}" for part in e.detail.splitlines())
        items.append((e.at, 1, line))
    items.sort(key=lambda item: (item[0], item[1]))
    lines.extend(text for _, _, text in items)
    return lines
