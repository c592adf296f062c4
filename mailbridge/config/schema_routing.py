"""`[[queues]]`, `[[filters]]`, `[[calendars]]` and `[[sla]]`: where a ticket lands, who owns
it, and how fast it must be answered (SPEC 7, 8)."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from mailbridge import business_time
from mailbridge.config.types import (
    Address,
    AddressOrDomain,
    Bool,
    Duration,
    FilePath,
    Priority,
    Regex,
    Section,
    reject,
)


def _queue_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", value):
        raise ValueError(f"invalid queue name {value!r} (use [a-z0-9-]+)")
    return value


def _tag(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        raise ValueError(f"invalid tag {value!r} (lowercase words: [a-z0-9_-]+)")
    return value


class Queue(Section):
    """A department (SPEC 7): where mail to its addresses or IMAP accounts lands, and who owns it."""

    name: Annotated[str, AfterValidator(_queue_name)]
    addresses: tuple[Address, ...] = ()
    imap: tuple[str, ...] = ()
    from_address: Address | None = None  # default: the first address, else [outbound]'s
    from_name: str | None = None  # default: [outbound] from_name
    notify: tuple[Address, ...] | None = None  # default: [agents] notify
    members: tuple[Address, ...] = ()  # empty: every agent
    assign: Literal["none", "round_robin", "least_open", "sticky"] = "none"
    assign_on_reply: Bool = False
    ack_template: FilePath | None = None


class FilterMatch(Section):
    # a filter matches a whole address, or every address of a domain when written `@example.com`
    from_: AddressOrDomain | None = Field(None, alias="from")
    to: AddressOrDomain | None = None
    subject: Regex | None = None
    body: Regex | None = None
    header: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _check(self) -> FilterMatch:
        if (self.header is None) != (self.regex is None):
            reject(
                "filters",
                [(("header" if self.header is None else "regex",), "header and regex go together")],
            )
        if not any((self.from_, self.to, self.subject, self.body, self.header)):
            reject("filters", [((), "match at least one of from, to, subject, body, header")])
        return self


class FilterSet(Section):
    queue: str | None = None
    tags: tuple[Annotated[str, AfterValidator(_tag)], ...] = ()
    priority: Priority | None = None
    owner: Address | None = None
    status: Literal["spam"] | None = None


class Filter(Section):
    name: str
    match: FilterMatch
    set_: FilterSet = Field(alias="set")
    stop: Bool = False


class CalendarSettings(Section):
    """`[[calendars]]`: working time for SLA targets (SPEC 8)."""

    name: str
    timezone: str
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    hours: str = "09:00-17:00"
    holidays: tuple[date, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> CalendarSettings:
        self.calendar()  # every ValueError names the bad value
        return self

    def calendar(self) -> business_time.Calendar:
        return business_time.make_calendar(
            self.name, self.timezone, self.days, self.hours, self.holidays
        )


class SlaSettings(Section):
    """`[[sla]]`: targets for the tickets of some queues and/or priorities; first match wins."""

    name: str
    queues: tuple[str, ...] = ()
    priorities: tuple[Priority, ...] = ()
    calendar: str | None = None
    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None

    def applies(self, queue: str, priority: str) -> bool:
        return (not self.queues or queue in self.queues) and (
            not self.priorities or priority in self.priorities
        )
