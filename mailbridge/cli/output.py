"""What the commands print that `views` does not already shape: the JSON of `outbox` and `queues`,
and the one-line-per-row and table forms of the lists (SPEC sections 5 and 7)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from mailbridge.lifecycle import Status
from mailbridge.views import iso

if TYPE_CHECKING:
    from mailbridge.storage.models import Outbox

# one group of `repo.queue_summary`: queue, status, unowned, count, oldest last activity
QueueGroup = tuple[str, str, bool, int, datetime | None]

WAITING = (Status.NEW.value, Status.OPEN.value)  # waiting for an agent
LIVE = (Status.NEW.value, Status.OPEN.value, Status.ANSWERED.value, Status.POSTPONED.value)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def print_ticket_table(rows: Sequence[dict[str, Any]]) -> None:
    """`tickets`: one row per ticket summary (`views.ticket_summary`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "#", "status", "queue", "owner", "subject", "customer", "msgs", "updated", box=None
    )
    for r in rows:
        table.add_row(
            str(r["number"]),
            r["status"],
            r["queue"],
            r["owner"] or "-",
            r["subject"][:60],
            r["customer"],
            str(r["message_count"]),
            r["updated_at"],
        )
    Console(width=max(120, Console().width)).print(table)


def sla_line(sla: dict[str, Any]) -> str:
    """`ticket show`'s line for its `sla` (`views.sla_view`)."""
    missed = ", ".join(sla["breached"]) or "none"
    dues = ", ".join(
        f"{k.removesuffix('_due')} {v}" for k, v in sla.items() if k.endswith("_due") and v
    )
    return f"  sla:       {sla['name']}: {dues or 'no due time running'}; breached: {missed}"


def quarantine_line(r: dict[str, Any]) -> str:
    """`quarantine list`: one entry (`views.quarantine_view`)."""
    return f"{r['id']:>6}  {r['created_at']}  {r['kind']:<11} {r['state']:<8} {r['sender'] or '-':<30} {r['reason']}"


def quarantine_fields(data: dict[str, Any]) -> list[str]:
    return [f"{key + ':':<12} {value}" for key, value in data.items()]


def outbox_view(row: Outbox) -> dict[str, Any]:
    """One outbox row as `outbox list --json` shows it."""
    return {
        "id": row.id,
        "ticket": row.ticket_number,
        "kind": row.kind,
        "state": row.state,
        "mail_from": row.mail_from,
        "rcpt_tos": [a for a in row.rcpt_tos.split(",") if a],
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if row.state == "queued" else None,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
    }


def outbox_line(r: dict[str, Any]) -> str:
    """`outbox list`: one row (`outbox_view`)."""
    ticket = f"#{r['ticket']}" if r["ticket"] else "-"
    return (
        f"{r['id']:>6}  {r['state']:<6} {r['kind']:<6} {ticket:<6} "
        f"{r['attempts']:>2}x  {','.join(r['rcpt_tos'])}  {r['last_error'] or ''}".rstrip()
    )


def outbox_fields(data: dict[str, Any]) -> list[str]:
    """`outbox show`: one `key: value` line per field, lists joined, `-` for none."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value)
        lines.append(f"{key + ':':<16} {'-' if value is None else value}")
    return lines


def queue_rows(
    configured: Sequence[str], groups: Sequence[QueueGroup], now: datetime
) -> list[dict[str, Any]]:
    """Per queue (the `configured` ones first, in order): tickets per status, unassigned live
    tickets, the oldest waiting ticket's age."""
    names = list(configured)
    names += sorted({g[0] for g in groups} - set(names))  # queues since removed from the config
    rows = []
    for name in names:
        mine = [g for g in groups if g[0] == name]
        statuses: dict[str, int] = {}
        for _, status, _, count, _ in mine:
            statuses[status] = statuses.get(status, 0) + count
        waiting = [oldest for _, status, _, _, oldest in mine if status in WAITING and oldest]
        since = min(waiting) if waiting else None
        rows.append(
            {
                "queue": name,
                "tickets": dict(sorted(statuses.items())),
                "total": sum(statuses.values()),
                "unassigned": sum(n for _, s, unowned, n, _ in mine if unowned and s in LIVE),
                "oldest_waiting_since": iso(since),
                "oldest_waiting_seconds": int((now - since).total_seconds()) if since else None,
            }
        )
    return rows


def queue_line(row: dict[str, Any]) -> str:
    """`queues`: one queue (`queue_rows`)."""
    counts = ", ".join(f"{s} {n}" for s, n in row["tickets"].items()) or "no tickets"
    age = row["oldest_waiting_seconds"]
    waiting = f"oldest waiting {_age(age)}" if age is not None else "nothing waiting"
    return f"{row['queue']}: {counts}; unassigned {row['unassigned']}; {waiting}"


def _age(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
