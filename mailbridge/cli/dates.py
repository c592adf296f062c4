"""Times as operators type them (`--until`, `--at`, `--since`): relative, day words or ISO 8601."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from mailbridge.cli.context import fail

WHEN_HELP = "+2d, +3h, 3d, tomorrow 09:00, 2026-12-01 or 2026-12-01T09:00 (UTC)"
MAX_AHEAD = timedelta(days=3660)  # ten years: anything later is a typo, not a plan
_PLUS = re.compile(r"\+\s*(\d+\s*[mhdw])", re.IGNORECASE)
_DAY_WORD = re.compile(r"(today|tomorrow)(?:\s+(\d{1,2}):(\d\d))?", re.IGNORECASE)
_RELATIVE = re.compile(r"\s*\d+\s*[a-zA-Z]+\s*")


def parse_when(value: str, now: datetime | None = None, option: str = "--until") -> datetime:
    """A time as people type it; a bad or absurd one ends the command with one line, exit 2."""
    from mailbridge.agent_commands import postpone_until

    now = now or datetime.now(UTC)
    text = value.strip()
    try:
        if plus := _PLUS.fullmatch(text):
            text = plus[1]
        if day := _DAY_WORD.fullmatch(text):
            hour, minute = int(day[2] or 0), int(day[3] or 0)
            base = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            when = base + timedelta(days=day[1].lower() == "tomorrow", hours=hour, minutes=minute)
            if hour > 23 or minute > 59:
                raise ValueError(f"no such time of day: {day[2]}:{day[3]}")
        else:
            when = postpone_until(text, now)
        if when - now > MAX_AHEAD:
            raise OverflowError
    except OverflowError:
        fail(f"{option} {value!r}: out of range (at most ten years ahead)", 2)
    except ValueError as exc:
        fail(f"{option} {value!r}: {exc} (use {WHEN_HELP})", 2)
    return when


def parse_bound(value: str, now: datetime) -> datetime:
    """A bound of `report`'s period: as `parse_when`, but a duration looks back ("7d": a week
    ago), where for postpone it looks ahead."""
    when = parse_when(value, now)
    return now - (when - now) if _RELATIVE.fullmatch(value) else when
