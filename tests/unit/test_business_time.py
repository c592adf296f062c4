"""Business-time arithmetic for SLA due times: weekends, holidays, DST changes, starts outside hours.

Europe/Bucharest changes to summer time on 2026-03-29 (03:00 -> 04:00, UTC+2 -> UTC+3) and back
on 2026-10-25 (04:00 -> 03:00). Expected values are written in local wall time and converted here,
so each one reads as a person with the office calendar on the wall would compute it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbridge.business_time import (
    DAY_NAMES,
    add_business,
    business_between,
    make_calendar,
    parse_days,
    parse_hours,
)

BUC = ZoneInfo("Europe/Bucharest")
OFFICE = make_calendar(
    "office",
    "Europe/Bucharest",
    ["mon", "tue", "wed", "thu", "fri"],
    "09:00-17:00",
    ["2026-12-25", "2027-01-01"],
)
ALWAYS = make_calendar("always", "Europe/Bucharest", DAY_NAMES, "00:00-24:00")
H = timedelta(hours=1)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BUC)


def test_within_one_working_day() -> None:
    # Monday 2026-11-02 10:00 + 4h = 14:00 the same day
    assert add_business(local(2026, 11, 2, 10), 4 * H, OFFICE) == local(2026, 11, 2, 14)


def test_result_is_utc() -> None:
    due = add_business(local(2026, 11, 2, 10), 4 * H, OFFICE)
    assert due.tzinfo is UTC
    assert due == datetime(2026, 11, 2, 12, tzinfo=UTC)


def test_due_exactly_at_closing_stays_at_closing() -> None:
    assert add_business(local(2026, 11, 2, 13), 4 * H, OFFICE) == local(2026, 11, 2, 17)


def test_crosses_the_night() -> None:
    # Monday 16:00 + 4h: 1h on Monday, 3h on Tuesday from 09:00
    assert add_business(local(2026, 11, 2, 16), 4 * H, OFFICE) == local(2026, 11, 3, 12)


def test_crosses_a_weekend() -> None:
    # Friday 2026-11-06 15:00 + 4h: 2h Friday, 2h Monday
    assert add_business(local(2026, 11, 6, 15), 4 * H, OFFICE) == local(2026, 11, 9, 11)


def test_crosses_a_holiday() -> None:
    # Thursday 2026-12-24 16:00 + 2h: 1h Thursday, Friday 25th is a holiday, 1h Monday 28th
    assert add_business(local(2026, 12, 24, 16), 2 * H, OFFICE) == local(2026, 12, 28, 10)


def test_holiday_then_weekend_then_holiday() -> None:
    # Thursday 2026-12-31 16:00 + 2h: Friday 2027-01-01 is a holiday, then the weekend
    assert add_business(local(2026, 12, 31, 16), 2 * H, OFFICE) == local(2027, 1, 4, 10)


@pytest.mark.parametrize(
    ("created", "due"),
    [
        # before opening on a working day: counting starts at 09:00
        (local(2026, 11, 2, 7, 30), local(2026, 11, 2, 13)),
        # after closing: counting starts at the next opening
        (local(2026, 11, 2, 18), local(2026, 11, 3, 13)),
        # on a Saturday: counting starts on Monday
        (local(2026, 11, 7, 12), local(2026, 11, 9, 13)),
        # on a Sunday night, just before midnight
        (local(2026, 11, 8, 23, 59), local(2026, 11, 9, 13)),
        # on a holiday
        (local(2026, 12, 25, 10), local(2026, 12, 28, 13)),
    ],
    ids=["before-opening", "after-closing", "saturday", "sunday-night", "holiday"],
)
def test_created_outside_hours(created: datetime, due: datetime) -> None:
    assert add_business(created, 4 * H, OFFICE) == due


def test_due_across_spring_dst_change() -> None:
    # Friday 2026-03-27 16:00 EET (14:00 UTC) + 4h: 1h Friday, 3h Monday from 09:00 EEST
    due = add_business(local(2026, 3, 27, 16), 4 * H, OFFICE)
    assert due == local(2026, 3, 30, 12)
    assert due == datetime(
        2026, 3, 30, 9, tzinfo=UTC
    )  # not 10:00 UTC: the office opens at 06:00 UTC now


def test_due_across_autumn_dst_change() -> None:
    # Friday 2026-10-23 16:00 EEST (13:00 UTC) + 4h: 1h Friday, 3h Monday from 09:00 EET
    due = add_business(local(2026, 10, 23, 16), 4 * H, OFFICE)
    assert due == local(2026, 10, 26, 12)
    assert due == datetime(2026, 10, 26, 10, tzinfo=UTC)


def test_around_the_clock_calendar_counts_the_short_and_long_dst_days() -> None:
    # Sunday 2026-03-29 has 23 hours in Bucharest, Sunday 2026-10-25 has 25
    assert business_between(local(2026, 3, 29), local(2026, 3, 30), ALWAYS) == 23 * H
    assert business_between(local(2026, 10, 25), local(2026, 10, 26), ALWAYS) == 25 * H
    # and adding real hours through the gap lands where the wall clock says
    assert add_business(local(2026, 3, 29, 2), 2 * H, ALWAYS) == local(2026, 3, 29, 5)


def test_durations_spanning_several_days() -> None:
    # "3d" with a calendar is 72 working hours = nine 8-hour days: Mon 2 Nov .. Thu 12 Nov
    assert add_business(local(2026, 11, 2, 9), 72 * H, OFFICE) == local(2026, 11, 12, 17)
    # two weeks over the Christmas holidays: 80 working hours from Monday 2026-12-21 09:00;
    # holidays on Fri 25 Dec and Fri 1 Jan take two days out, so it ends on Tue 5 Jan 17:00
    assert add_business(local(2026, 12, 21, 9), 80 * H, OFFICE) == local(2027, 1, 5, 17)


def test_no_calendar_counts_around_the_clock() -> None:
    start = datetime(2026, 11, 7, 12, tzinfo=UTC)  # a Saturday
    assert add_business(start, 4 * H, None) == start + 4 * H
    assert business_between(start, start + 50 * H, None) == 50 * H


def test_business_between_over_a_weekend_and_a_holiday() -> None:
    # Thursday 2026-12-24 09:00 to Tuesday 2026-12-29 12:00: Thu 8h + Mon 8h + Tue 3h
    assert business_between(local(2026, 12, 24, 9), local(2026, 12, 29, 12), OFFICE) == 19 * H
    # entirely outside hours
    assert business_between(local(2026, 11, 7, 9), local(2026, 11, 8, 20), OFFICE) == timedelta(0)
    # reversed arguments give a negative span
    assert business_between(local(2026, 11, 2, 14), local(2026, 11, 2, 10), OFFICE) == -4 * H


def test_business_between_across_spring_dst() -> None:
    # Friday 09:00 EET to Monday 17:00 EEST: two full 8-hour days
    assert business_between(local(2026, 3, 27, 9), local(2026, 3, 30, 17), OFFICE) == 16 * H


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        add_business(datetime(2026, 11, 2, 9), H, OFFICE)


@pytest.mark.parametrize(
    ("hours", "message"),
    [("9-17", "invalid hours"), ("17:00-09:00", "end must be after"), ("09:00", "invalid hours")],
)
def test_bad_hours(hours: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(hours)


def test_bad_days_and_zone() -> None:
    with pytest.raises(ValueError, match="unknown day"):
        parse_days(["monday", "funday"])
    with pytest.raises(ValueError, match="at least one"):
        parse_days([])
    with pytest.raises(ValueError, match="unknown time zone"):
        make_calendar("x", "Mars/Olympus")


def test_a_calendar_with_no_working_time_is_an_error_not_a_hang() -> None:
    every_day = [date(2026, 1, 1) + timedelta(days=i) for i in range(4000)]
    never = make_calendar("never", "UTC", ["mon"], "09:00-10:00", every_day)
    with pytest.raises(ValueError, match="no working time"):
        add_business(datetime(2026, 1, 1, tzinfo=UTC), H, never)


@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 20),
)
def test_between_inverts_add(start: datetime, minutes: int) -> None:
    duration = timedelta(minutes=minutes)
    due = add_business(start, duration, OFFICE)
    assert due >= start
    assert business_between(start, due, OFFICE) == duration
