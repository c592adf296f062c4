"""Agent commands: `#resolve`, `#close`, `#postpone 3d`, `#spam`, `#delete`, `#note` at the top of a reply.

PURE. Commands are the leading lines of the reply text (blank lines between them allowed); the
first other line ends them. They are removed before the reply is relayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

NAMES = (
    *("resolve", "close", "postpone", "spam", "delete", "note"),
    # queue and ownership (SPEC 7), carried out by `ownership`
    *("take", "assign", "unassign", "queue", "tag", "untag", "priority"),
)
_LINE = re.compile(r"^\s*#([a-z]+)\b\s*(.*?)\s*$", re.IGNORECASE)
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# ten years: further ahead is a typo, and past year 9999 the date itself overflows
MAX_POSTPONE = timedelta(days=3653)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    argument: str = ""


@dataclass(frozen=True, slots=True)
class Parsed:
    commands: tuple[Command, ...]
    text: str  # the reply without its command lines
    unknown: tuple[str, ...] = ()  # '#words' that looked like commands but are not


def split_commands(body: str) -> Parsed:
    lines = body.splitlines()
    commands: list[Command] = []
    unknown: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        match = _LINE.match(line)
        if not match:
            break
        name = match.group(1).lower()
        if name in NAMES:
            commands.append(Command(name, match.group(2)))
        elif commands or not unknown:
            unknown.append(line.strip())
            if not commands:
                break  # '#hashtag' as the first word of a normal reply is text, not a command
        i += 1
    if not commands:
        return Parsed((), body, ())
    return Parsed(tuple(commands), "\n".join(lines[i:]).strip("\n"), tuple(unknown))


def postpone_until(argument: str, now: datetime) -> datetime:
    """`3d`, `12h`, `2026-12-01` (midnight UTC) or `2026-12-01T09:00` (UTC unless an offset is given).

    Raises ValueError for anything else, and for a time more than MAX_POSTPONE ahead."""
    arg = argument.strip()
    shown = arg if len(arg) <= 40 else arg[:40] + "…"
    too_far = ValueError(f"{shown!r} is too far ahead (at most {MAX_POSTPONE.days} days)")
    relative = _RELATIVE.match(arg)
    if relative:
        try:
            delta = timedelta(**{_UNITS[relative.group(2).lower()]: int(relative.group(1))})
        except (OverflowError, ValueError):  # beyond timedelta, or more digits than int() reads
            raise too_far from None
        if delta > MAX_POSTPONE:
            raise too_far
        return now + delta
    try:
        when = datetime.fromisoformat(arg)
    except ValueError:
        raise ValueError(
            f"cannot read the time {shown!r} (use 3d, 2026-12-01 or 2026-12-01T09:00)"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when - now > MAX_POSTPONE:
        raise too_far
    return when
