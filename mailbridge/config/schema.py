"""`Settings`, the whole validated config, and its small operational sections (`[database]`,
`[log]`, `[metrics]`, `[cluster]`, `[parse]`); the larger sections live in the schema_*.py
modules beside this one. Checks that span sections (queues against agents and IMAP accounts,
SLA calendars, one SQLite writer) are Settings' own validators."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, Strict, model_validator

from mailbridge import business_time, correlate
from mailbridge.config.schema_outbound import OutboundSettings, Webhook
from mailbridge.config.schema_routing import CalendarSettings, Filter, Queue, SlaSettings
from mailbridge.config.schema_sources import ImapAccount, SmtpSettings
from mailbridge.config.schema_tickets import AgentsSettings, Rule, TicketsSettings
from mailbridge.config.types import (
    ADDRESS,
    Count,
    Duration,
    Loc,
    Section,
    Size,
    reject,
    split_listen,
)

# what storage/engine.py can open with the declared dependencies (the psycopg extra for PostgreSQL)
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


def _database_url(value: str) -> str:
    scheme = re.match(r"([a-z][a-z0-9+.-]*)://", value)
    if not scheme:
        raise ValueError(f"not a database URL: {value!r} (e.g. sqlite:///var/mailbridge.db)")
    if scheme[1] not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database {scheme[1]}:// (use sqlite:///path or postgresql://user@host/db)"
        )
    return value


def _metrics_listen(value: str) -> str:
    if isinstance(split_listen(value), Path):
        raise ValueError(f"invalid address {value!r} (use host:port)")
    return value


class DatabaseSettings(Section):
    url: Annotated[str, AfterValidator(_database_url)] = "sqlite:///var/mailbridge.db"
    pool_size: Count = 5
    batch_size: Count = 100  # messages per group commit in `ingest`


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class MetricsSettings(Section):
    listen: Annotated[str, AfterValidator(_metrics_listen)] | None = None  # None: no endpoint


class ClusterSettings(Section):
    node_id: str | None = None  # None: the host name (mailbridge.node)
    lease_ttl: Duration = timedelta(seconds=30)


class ParseSettings(Section):
    # worker processes that parse; None: one per CPU; 0: parse in process, without a deadline
    workers: Annotated[int, Strict(), Field(ge=0)] | None = None
    timeout: Duration = timedelta(seconds=30)  # per message; then quarantined "parse timeout"
    inline_max_size: Size = 4 * 1024  # mail up to this size is parsed in process


class Settings(Section):
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    imap: tuple[ImapAccount, ...] = ()
    agents: AgentsSettings = AgentsSettings()
    tickets: TicketsSettings = TicketsSettings()
    outbound: OutboundSettings = OutboundSettings()
    rules: tuple[Rule, ...] = ()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    webhooks: tuple[Webhook, ...] = ()
    queues: tuple[Queue, ...] = ()
    filters: tuple[Filter, ...] = ()
    parse: ParseSettings = ParseSettings()
    calendars: tuple[CalendarSettings, ...] = ()
    sla: tuple[SlaSettings, ...] = ()
    _source_path: Path | None = PrivateAttr(default=None)
    _queue_list: tuple[Queue, ...] = PrivateAttr(default=())
    _addressing: correlate.Addressing | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file these settings came from; None for the embedded default."""
        return self._source_path

    @property
    def queue_list(self) -> tuple[Queue, ...]:
        """The queues in effect: the configured ones, else one `support` holding [smtp] addresses."""
        # built once: ingest asks for it for every new ticket
        if not self._queue_list:
            self._queue_list = self.queues or (
                Queue(name="support", addresses=self.smtp.addresses),
            )
        return self._queue_list

    @property
    def addressing(self) -> correlate.Addressing:
        """Plus-tokens on the accepted addresses and the subject tag, built once per config."""
        if self._addressing is None:
            self._addressing = correlate.Addressing(
                [a.lower() for a in self.accepted_addresses],
                self.tickets.plus_separator,
                self.tickets.subject_tag,
            )
        return self._addressing

    @property
    def accepted_addresses(self) -> tuple[str, ...]:
        """Every address the listener accepts (plus-tokens on them too): [smtp] and the queues'."""
        found = [*self.smtp.addresses, *(a for q in self.queues for a in q.addresses)]
        return tuple(dict.fromkeys(found))

    def queue(self, name: str | None) -> Queue:
        """A queue by name; the first queue for an unknown name (e.g. one removed from the config)."""
        queues = self.queue_list
        return next((q for q in queues if q.name == name), queues[0])

    def queue_sender(self, name: str | None) -> tuple[str, str]:
        """(from address, from name) of a queue's outbound mail."""
        queue = self.queue(name)
        fallback = self.outbound.from_address or self.smtp.addresses[0]
        address = queue.from_address or (
            queue.addresses[0] if self.queues and queue.addresses else fallback
        )
        return address.lower(), queue.from_name or self.outbound.from_name

    def queue_members(self, name: str | None) -> tuple[str, ...]:
        """Who may own the queue's tickets: its members, else every agent listed by address."""
        return self.queue(name).members or self.agents.addresses

    def queue_notify(self, name: str | None) -> tuple[str, ...]:
        notify = self.queue(name).notify
        return self.agents.notify if notify is None else notify

    def is_agent(self, address: str) -> bool:
        address = address.lower()
        return address in self.agents.addresses or address.rpartition("@")[2] in self.agents.domains

    @model_validator(mode="after")
    def _check_queues(self) -> Settings:
        problems: list[tuple[Loc, str]] = []
        owner_of: dict[str, str] = {}
        imap_names = {account.name for account in self.imap}
        for i, queue in enumerate(self.queues):
            for j, address in enumerate(queue.addresses):
                other = owner_of.setdefault(address, queue.name)
                if other != queue.name:
                    problems.append(
                        (
                            ("queues", i, "addresses", j),
                            f"{address} is also an address of queue {other!r}",
                        )
                    )
            for j, name in enumerate(queue.imap):
                if name not in imap_names:
                    problems.append((("queues", i, "imap", j), f"no [[imap]] named {name!r}"))
            for j, member in enumerate(queue.members):
                if not self.is_agent(member):
                    problems.append(
                        (("queues", i, "members", j), f"{member} is not an agent ([agents])")
                    )
        names = {q.name for q in self.queue_list}
        for i, rule in enumerate(self.filters):
            if rule.set_.queue is not None and rule.set_.queue not in names:
                problems.append((("filters", i, "set"), f"unknown queue {rule.set_.queue!r}"))
            if rule.set_.owner is not None and not self.is_agent(rule.set_.owner):
                problems.append((("filters", i, "set"), f"{rule.set_.owner} is not an agent"))
        reject("queues", problems)
        return self

    @model_validator(mode="after")
    def _check_sla(self) -> Settings:
        names = {c.name for c in self.calendars}
        reject(
            "settings",
            [
                (("sla", i, "calendar"), f"unknown calendar {sla.calendar!r}")
                for i, sla in enumerate(self.sla)
                if sla.calendar is not None and sla.calendar not in names
            ],
        )
        return self

    def calendar_for(self, sla: SlaSettings) -> business_time.Calendar | None:
        for entry in self.calendars:
            if entry.name == sla.calendar:
                return entry.calendar()
        return None

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        # outbound mail leaves from, and loop-detects on, the first support address by default;
        # derived only from a valid address so one typo is not reported twice
        if not isinstance(data, dict):
            return data
        smtp, outbound = data.get("smtp", {}), data.get("outbound", {})
        if not (isinstance(smtp, dict) and isinstance(outbound, dict)):
            return data
        addresses = smtp.get("addresses", ["support@localhost"])
        first = addresses[0] if isinstance(addresses, list) and addresses else None
        sender = outbound.get("from_address", first)
        if not (isinstance(sender, str) and ADDRESS.fullmatch(sender)):
            return data
        outbound = {"from_address": sender.lower(), "identity": sender.lower(), **outbound}
        return {**data, "outbound": outbound}

    @model_validator(mode="after")
    def _one_writer(self) -> Settings:
        # SQLite takes one writer at a time: a second listener process would only wait on its lock
        if self.smtp.workers > 1 and self.database.url.startswith("sqlite"):
            reject(
                "settings",
                [(("smtp", "workers"), "workers > 1 needs PostgreSQL (SQLite has one writer)")],
            )
        return self
