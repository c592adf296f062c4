"""What every sweep shares: the change it reports, its typed config, and whom it tells."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mailbridge import sla
from mailbridge.lifecycle import Note

if TYPE_CHECKING:
    from mailbridge.config import Rule, Settings, SlaSettings
    from mailbridge.storage import Session, Store
    from mailbridge.storage.models import Ticket

WAKE = "wake"  # the built-in rule that ends postponements
PURGED = "purged"  # `to_status` of a Change that removed the ticket
SLA_BREACH = Note.SLA_BREACH  # the stored event kind (SPEC 8's `sla_breach`, as webhooks match it)

# (rule name, changes made) after each rule's pass; metrics count rule runs with it
RuleObserver = Callable[[str, int], None]
# (queue, target) for each recorded SLA breach
BreachObserver = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Change:
    """One ticket a sweep changed (or, in a dry run, would change)."""

    number: int
    from_status: str
    to_status: str
    rule: str
    action: str = "status"  # status | sla_breach | remind | escalate
    detail: str | None = None

    def describe(self) -> str:
        if self.action != "status":
            return f"#{self.number} {self.action}: {self.detail} ({self.rule})"
        return f"#{self.number} {self.from_status} -> {self.to_status} (rule {self.rule})"

    def as_json(self) -> dict[str, Any]:
        return {
            "ticket": self.number,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "rule": self.rule,
            # status changes keep the shape scripts already read; other actions say what they are
            **({"action": self.action, "detail": self.detail} if self.action != "status" else {}),
        }


class RuleMail(Protocol):
    """The mail sweeps queue, in the transaction of the change that causes it
    (`outbound.decide.Outbound`)."""

    def rule_notice(
        self,
        session: Session,
        ticket: Ticket,
        rule: str,
        now: datetime,
        template: Path | None = ...,
    ) -> None: ...

    def rule_mail(
        self,
        session: Session,
        ticket: Ticket,
        kind: str,
        values: dict[str, object],
        now: datetime,
        template: Path | None = ...,
        recipients: list[str] | None = ...,
    ) -> None: ...

    def sla_breach_notice(
        self, session: Session, ticket: Ticket, values: dict[str, object], now: datetime
    ) -> None: ...

    def queue_notify_addresses(self, ticket: Ticket) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class SlaPolicies:
    """The `[[sla]]` entries with their calendars; the first that takes a ticket applies."""

    entries: tuple[tuple[SlaSettings, sla.Policy], ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> SlaPolicies:
        return cls(
            tuple(
                (
                    entry,
                    sla.Policy(
                        entry.name,
                        settings.calendar_for(entry),
                        entry.first_response,
                        entry.next_response,
                        entry.resolution,
                    ),
                )
                for entry in settings.sla
            )
        )

    def __bool__(self) -> bool:
        return bool(self.entries)

    def policy_for(self, ticket: Ticket) -> sla.Policy | None:
        return next((p for e, p in self.entries if e.applies(ticket.queue, ticket.priority)), None)

    def clock(self, ticket: Ticket, events: Iterable[Any]) -> tuple[sla.Clock | None, str | None]:
        """The ticket's SLA targets from its stored events (pure computation in `mailbridge.sla`)."""
        policy = self.policy_for(ticket)
        if policy is None:
            return None, None
        history = [sla.HistoryEvent(e.at, e.kind, e.to_status) for e in events]
        return sla.compute(policy, ticket.created_at, history), policy.name


@dataclass(frozen=True, slots=True)
class Assigning:
    """How a queue assigns its tickets, and among whom (its members, else every listed agent)."""

    strategy: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class SweepConfig:
    """Everything the sweeps read from settings, built once per (re)load and swapped whole."""

    rules: tuple[Rule, ...]
    sla: SlaPolicies
    queues: Mapping[str, Assigning]
    first_queue: str  # what an unknown queue name (one removed from the config) falls back to

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepConfig:
        queues = settings.queue_list
        return cls(
            rules=settings.rules,
            sla=SlaPolicies.from_settings(settings),
            queues={q.name: Assigning(q.assign, settings.queue_members(q.name)) for q in queues},
            first_queue=queues[0].name,
        )

    def assigning(self, queue: str) -> Assigning:
        return self.queues.get(queue) or self.queues[self.first_queue]


@dataclass(frozen=True, slots=True)
class Run:
    """What one run of the sweeps works with; the config stays the one the run started with."""

    store: Store
    config: SweepConfig
    outbound: RuleMail | None
    on_breach: BreachObserver | None


def narrowed(rule: Rule, ticket: Ticket, tags: Iterable[str] = ()) -> bool:
    """Whether a rule's optional `queue`, `priority` and `tags` (all of them) take this ticket."""
    if rule.queue is not None and ticket.queue != rule.queue:
        return False
    if rule.priority is not None and ticket.priority != rule.priority:
        return False
    return set(rule.tags) <= set(tags)


def span(delta: timedelta) -> str:
    """`7d`, `36h`, `90m`, `45s`: how config writes durations."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
