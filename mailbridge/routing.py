"""Filters and queue routing for a new ticket (SPEC section 7).

PURE. Given the facts of a mail and the configured queues and filters, `Router.route` returns
the queue, what the filters set (tags, priority, owner, spam), and the rules that decided, in
words, so `ingest --dry-run` and the `created` event can explain it.

Routing order, first match wins: a filter that sets `queue`; the envelope recipient (or
Delivered-To / X-Original-To) that is a queue address or its plus-token; a queue address in To,
then in Cc; the IMAP account's queue; the first queue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

PRIORITIES = ("low", "normal", "high", "urgent")


class QueueLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def addresses(self) -> tuple[str, ...]: ...
    @property
    def imap(self) -> tuple[str, ...]: ...


class MatchLike(Protocol):
    @property
    def from_(self) -> str | None: ...
    @property
    def to(self) -> str | None: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def body(self) -> str | None: ...
    @property
    def header(self) -> str | None: ...
    @property
    def regex(self) -> str | None: ...


class SetLike(Protocol):
    @property
    def queue(self) -> str | None: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def priority(self) -> str | None: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...


class FilterLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def match(self) -> MatchLike: ...
    @property
    def set_(self) -> SetLike: ...
    @property
    def stop(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing looks at in one mail; addresses lowercased."""

    sender: str
    envelope_to: tuple[str, ...] = ()
    delivered_to: tuple[str, ...] = ()  # Delivered-To and X-Original-To
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    subject: str = ""
    body: str = ""
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)  # lowercase names
    imap_account: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    queue: str
    rule: str  # e.g. "queue billing: envelope recipient billing@example.com"
    tags: tuple[str, ...] = ()
    priority: str = "normal"
    owner: str | None = None
    owner_filter: str | None = None  # the filter that set the owner
    spam: str | None = None  # the filter that set status = spam
    filters: tuple[str, ...] = ()  # "filter vip: tag vip, priority high"

    def explain(self) -> str:
        return "; ".join((self.rule, *self.filters))


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    from_: str | None
    to: str | None
    subject: re.Pattern[str] | None
    body: re.Pattern[str] | None
    header: str | None
    regex: re.Pattern[str] | None
    queue: str | None
    tags: tuple[str, ...]
    priority: str | None
    owner: str | None
    spam: bool
    stop: bool

    def matches(self, facts: Facts) -> bool:
        if self.from_ is not None and not _address_matches(self.from_, (facts.sender,)):
            return False
        if self.to is not None and not _address_matches(
            self.to, (*facts.envelope_to, *facts.delivered_to, *facts.to, *facts.cc)
        ):
            return False
        if self.subject is not None and not self.subject.search(facts.subject):
            return False
        if self.body is not None and not self.body.search(facts.body):
            return False
        if self.header is not None and self.regex is not None:
            values = facts.headers.get(self.header, ())
            if not any(self.regex.search(v) for v in values):
                return False
        return True

    def effect(self) -> str:
        parts = [f"queue {self.queue}"] if self.queue else []
        parts += [f"tag {t}" for t in self.tags]
        if self.priority:
            parts.append(f"priority {self.priority}")
        if self.owner:
            parts.append(f"owner {self.owner}")
        if self.spam:
            parts.append("status spam")
        return f"filter {self.name}: {', '.join(parts) or 'no change'}"


def _address_matches(pattern: str, addresses: Iterable[str]) -> bool:
    if pattern.startswith("@"):
        return any(a.endswith(pattern) for a in addresses)
    return pattern in addresses


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    # case-insensitive: "Invoice" and "invoice" in a subject are the same topic
    return re.compile(pattern, re.IGNORECASE) if pattern is not None else None


class Router:
    def __init__(
        self, queues: Sequence[QueueLike], filters: Sequence[FilterLike], separator: str = "+"
    ) -> None:
        if not queues:
            raise ValueError("routing needs at least one queue")
        self.first = queues[0].name
        self.separator = separator
        self.by_address = {a.lower(): q.name for q in queues for a in q.addresses}
        self.by_imap = {name: q.name for q in queues for name in q.imap}
        self.filters = [
            _Filter(
                name=f.name,
                from_=f.match.from_,
                to=f.match.to,
                subject=_compile(f.match.subject),
                body=_compile(f.match.body),
                header=f.match.header.lower() if f.match.header else None,
                regex=_compile(f.match.regex),
                queue=f.set_.queue,
                tags=tuple(f.set_.tags),
                priority=f.set_.priority,
                owner=f.set_.owner,
                spam=f.set_.status == "spam",
                stop=f.stop,
            )
            for f in filters
        ]

    @property
    def header_names(self) -> frozenset[str]:
        """The (lowercase) headers the filters look at."""
        return frozenset(f.header for f in self.filters if f.header is not None)

    @property
    def needs_body(self) -> bool:
        return any(f.body is not None for f in self.filters)

    def queue_of_address(self, address: str) -> str | None:
        """The queue an address (or its plus-token form) belongs to."""
        address = address.strip().lower()
        found = self.by_address.get(address)
        if found is None and self.separator in address.partition("@")[0]:
            local, _, domain = address.partition("@")
            found = self.by_address.get(f"{local.split(self.separator, 1)[0]}@{domain}")
        return found

    def route(self, facts: Facts) -> Route:
        tags: list[str] = []
        priority, owner, owner_filter, spam, queue_rule = None, None, None, None, None
        queue: str | None = None
        explained: list[str] = []
        for f in self.filters:
            if not f.matches(facts):
                continue
            explained.append(f.effect())
            if f.queue and queue is None:
                queue, queue_rule = f.queue, f"queue {f.queue}: filter {f.name}"
            tags += [t for t in f.tags if t not in tags]
            priority = f.priority or priority
            if f.owner and owner is None:
                owner, owner_filter = f.owner, f.name
            if f.spam and spam is None:
                spam = f.name
            if f.stop:
                break
        if queue is None:
            queue, queue_rule = self._by_recipient(facts)
        assert queue_rule is not None
        return Route(
            queue=queue,
            rule=queue_rule,
            tags=tuple(tags),
            priority=priority or "normal",
            owner=owner,
            owner_filter=owner_filter,
            spam=spam,
            filters=tuple(explained),
        )

    def _by_recipient(self, facts: Facts) -> tuple[str, str]:
        for label, addresses in (
            ("envelope recipient", facts.envelope_to),
            ("delivered-to", facts.delivered_to),
            ("to", facts.to),
            ("cc", facts.cc),
        ):
            for address in addresses:
                queue = self.queue_of_address(address)
                if queue is not None:
                    return queue, f"queue {queue}: {label} {address.lower()}"
        if facts.imap_account and facts.imap_account in self.by_imap:
            queue = self.by_imap[facts.imap_account]
            return queue, f"queue {queue}: imap account {facts.imap_account}"
        return self.first, f"queue {self.first}: the first queue"
