"""The report as readable tables (rich), for a terminal or a mail to the team."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


def human_duration(seconds: float | None) -> str:
    """`45s`, `12m 30s`, `2h 05m`, `3d 04h`: two units are enough to compare at a glance."""
    if seconds is None:
        return "-"
    s = round(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


BY = ("queue", "owner", "tag", "priority")


def render(report: dict[str, Any], width: int = 100, by: Sequence[str] = BY) -> str:
    """The report as readable tables (rich), for a terminal or a mail to the team; `by` picks
    the breakdowns shown (all four by default)."""
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    for table in (
        _status_table(report),
        _delay_table(report),
        _time_table(report),
        _mailbox_table(report),
        *(_breakdown_table(report, name) for name in by if f"by_{name}" in report),
    ):
        console.print(table)
        console.print()
    reopen = report["reopen"]
    rate = "-" if reopen["rate"] is None else f"{reopen['rate']:.1%}"
    console.print(
        f"Reopen rate: {rate} ({reopen['reopened']} of {reopen['resolved']} resolved tickets came back)"
    )
    console.print(f"As of {report['generated_at']}")
    return out.getvalue()


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _status_table(report: dict[str, Any]) -> Table:
    table = _table(f"Tickets ({report['tickets']['total']})", "status", "tickets")
    for status, n in report["tickets"]["by_status"].items():
        table.add_row(status, str(n))
    return table


def _delay_table(report: dict[str, Any]) -> Table:
    table = _table("Response times", "", "tickets", "pending", "p50", "p90", "p99", "mean")
    for label, key in (("first response", "first_response"), ("resolution", "resolution")):
        d = report[key]
        table.add_row(
            label,
            str(d["count"]),
            str(d["pending"]),
            *(human_duration(d[k]) for k in ("p50", "p90", "p99", "mean")),
        )
    return table


def _time_table(report: dict[str, Any]) -> Table:
    table = _table("Time in each status", "status", "tickets", "total", "mean per ticket")
    for status, d in report["time_in_status"].items():
        if d["tickets"]:
            table.add_row(
                status,
                str(d["tickets"]),
                human_duration(d["total_seconds"]),
                human_duration(d["mean_seconds"]),
            )
    return table


_BREAKDOWN_DELAYS = ("first_response_p50", "first_response_p90", "resolution_p50", "resolution_p90")


def _breakdown_table(report: dict[str, Any], name: str) -> Table:
    columns = ("tickets", "share", "open now", "1st resp p50", "p90", "resolved p50", "p90")
    table = _table(f"By {name}", name, *columns, "reopened")
    for key, d in report[f"by_{name}"].items():
        rate = "-" if d["reopen_rate"] is None else f"{d['reopen_rate']:.0%}"
        delays = [human_duration(d[k]) for k in _BREAKDOWN_DELAYS]
        table.add_row(
            key, str(d["tickets"]), f"{d['share']:.0%}", str(d["open_now"]), *delays, rate
        )
    return table


def _mailbox_table(report: dict[str, Any]) -> Table:
    mailboxes = report["mailboxes"]
    used = [s for s in report["tickets"]["by_status"] if report["tickets"]["by_status"][s]]
    table = _table("Per mailbox", "mailbox", "tickets", *used)
    for name, d in mailboxes.items():
        table.add_row(name, str(d["tickets"]), *(str(d["by_status"].get(s, 0)) for s in used))
    return table
