"""Business-time arithmetic for SLA targets: `[[calendars]]` working days, hours and holidays.

PURE: standard library and zoneinfo only, no clock, no I/O. Every instant in and out is an aware
datetime; results are UTC. Working hours are local wall-clock hours, so each working day is built
in its own time zone and only then converted to UTC: across a DST change "09:00-17:00" stays
09:00-17:00 local, and a day's length in UTC follows the clock change. Without a calendar, time is
counted around the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A calendar whose every day is a holiday would loop forever; ten years without a working
# day is treated as a configuration that cannot meet any target.
_HORIZON_DAYS = 3660


@dataclass(frozen=True, slots=True)
class Calendar:
    name: str
    timezone: str
    days: frozenset[int]  # date.weekday() numbers: 0 = Monday
    opens: time
    closes: time | None  # None: midnight at the end of the day ("24:00")
    holidays: frozenset[date]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def parse_hours(text: str) -> tuple[time, time | None]:
    """`"09:00-17:00"` -> (09:00, 17:00); an end of `24:00` means the end of the day."""
    start, sep, end = text.replace(" ", "").partition("-")
    if not sep:
        raise ValueError(f"invalid hours {text!r} (use e.g. 09:00-17:00)")
    opens = _clock_time(start, text)
    closes = None if end == "24:00" else _clock_time(end, text)
    if closes is not None and closes <= opens:
        raise ValueError(f"invalid hours {text!r}: the end must be after the start")
    return opens, closes


def _clock_time(value: str, whole: str) -> time:
    try:
        hour, minute = value.split(":")
        return time(int(hour), int(minute))
    except ValueError:
        raise ValueError(f"invalid hours {whole!r} (use e.g. 09:00-17:00)") from None


def parse_days(names: Iterable[str]) -> frozenset[int]:
    days = set()
    for name in names:
        key = name.strip().lower()[:3]
        if key not in DAY_NAMES:
            raise ValueError(f"unknown day {name!r} (use {', '.join(DAY_NAMES)})")
        days.add(DAY_NAMES.index(key))
    if not days:
        raise ValueError("a calendar needs at least one working day")
    return frozenset(days)


def make_calendar(
    name: str,
    timezone: str,
    days: Iterable[str] = DAY_NAMES[:5],
    hours: str = "09:00-17:00",
    holidays: Iterable[str | date] = (),
) -> Calendar:
    """Build a calendar from config values; ValueError names what is wrong."""
    try:
        ZoneInfo(timezone)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    opens, closes = parse_hours(hours)
    off = frozenset(h if isinstance(h, date) else date.fromisoformat(h) for h in holidays)
    return Calendar(name, timezone, parse_days(days), opens, closes, off)


def _local(day: date, at: time | None, zone: ZoneInfo) -> datetime:
    if at is None:
        return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    # fold=0: a wall time that happens twice (autumn) is its first occurrence; one that does not
    # happen (spring gap) is read with the offset before the change, i.e. just after the gap
    return datetime.combine(day, at, zone).astimezone(UTC)


def working_intervals(calendar: Calendar, start: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The calendar's working intervals in UTC, in order, from the local day containing `start`."""
    zone = calendar.zone
    day = start.astimezone(zone).date()
    for _ in range(_HORIZON_DAYS):
        if day.weekday() in calendar.days and day not in calendar.holidays:
            begin = _local(day, calendar.opens, zone)
            end = _local(day, calendar.closes, zone)
            if end > begin:
                yield begin, end
        day += timedelta(days=1)
    raise ValueError(f"calendar {calendar.name!r} has no working time in ten years")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("business time needs aware datetimes")
    return value.astimezone(UTC)


def add_business(start: datetime, duration: timedelta, calendar: Calendar | None) -> datetime:
    """The instant `duration` of working time after `start` (UTC).

    A start outside working hours begins counting at the next opening. A due time that falls
    exactly on a closing time stays there (it does not jump to the next morning).
    """
    start = _utc(start)
    if calendar is None:
        return start + duration
    left = duration
    for begin, end in working_intervals(calendar, start):
        if end <= start:
            continue
        begin = max(begin, start)
        if begin + left <= end:
            return begin + left
        left -= end - begin
    raise AssertionError("unreachable: working_intervals ends by raising")


def business_between(a: datetime, b: datetime, calendar: Calendar | None) -> timedelta:
    """Working time from `a` to `b` (negative if `b` is before `a`)."""
    a, b = _utc(a), _utc(b)
    if b < a:
        return -business_between(b, a, calendar)
    if calendar is None:
        return b - a
    total = timedelta(0)
    for begin, end in working_intervals(calendar, a):
        if begin >= b:
            break
        overlap = min(end, b) - max(begin, a)
        if overlap > timedelta(0):
            total += overlap
    return total
