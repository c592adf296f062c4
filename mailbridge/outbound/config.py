"""What outbound mail derives from the settings: built once per (re)load, read by every decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailbridge import rules as classify
from mailbridge.mailtext import template

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.correlate import Tagger, Tokens


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """Addresses, per-queue texts and recipients, and limits of the mail `Outbound` queues."""

    domain: str  # of our Message-IDs
    identity: str  # X-Loop
    from_name: str  # [outbound] from_name: reminders, escalations and SLA notices
    senders: Mapping[str, tuple[str, str]]  # (from address, from name) per queue
    default_sender: tuple[str, str]  # a queue no longer configured: the first queue's
    tokens: Tokens
    tagger: Tagger
    agents: classify.Policy
    trusted_authserv_ids: frozenset[str]
    display_names: bool  # relayed replies show the agent's name
    notify: tuple[str, ...]  # [agents] notify, our own addresses left out
    queue_notify: Mapping[str, tuple[str, ...]]  # per queue (SPEC 7), the same
    all_notify: frozenset[str]
    ack_template: str
    queue_ack: Mapping[str, str]  # queues with an acknowledgement text of their own
    acknowledge: bool
    ack_max_per_sender_per_hour: int
    ack_max_per_domain_per_hour: int
    ack_max_per_hour: int
    max_participants: int
    max_recipients: int
    customer_close_words: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundConfig:
        """Reads the acknowledgement templates: raises OSError when one cannot be read."""
        out, tickets, agents = settings.outbound, settings.tickets, settings.agents
        from_address = (out.from_address or settings.smtp.addresses[0]).lower()
        tokens = settings.addressing.tokens
        queues = settings.queue_list
        queue_notify = {
            q.name: tuple(a for a in settings.queue_notify(q.name) if not tokens.is_ours(a))
            for q in queues
        }
        notify = tuple(a for a in agents.notify if not tokens.is_ours(a))
        custom = tickets.ack_template
        return cls(
            domain=from_address.rpartition("@")[2],
            identity=out.identity or from_address,
            from_name=out.from_name,
            senders={q.name: settings.queue_sender(q.name) for q in queues},
            default_sender=settings.queue_sender(None),
            tokens=tokens,
            tagger=settings.addressing.tagger,
            agents=classify.Policy(
                agent_addresses=frozenset(a.lower() for a in agents.addresses),
                agent_domains=frozenset(d.lower().lstrip("@") for d in agents.domains),
            ),
            trusted_authserv_ids=frozenset(a.lower() for a in agents.trusted_authserv_ids),
            display_names=agents.display_names,
            notify=notify,
            queue_notify=queue_notify,
            all_notify=frozenset({a for n in queue_notify.values() for a in n} | set(notify)),
            ack_template=Path(custom).read_text("utf-8") if custom else template("ack"),
            queue_ack={
                q.name: Path(q.ack_template).read_text("utf-8")
                for q in queues
                if q.ack_template is not None
            },
            acknowledge=tickets.acknowledge,
            ack_max_per_sender_per_hour=tickets.ack_max_per_sender_per_hour,
            ack_max_per_domain_per_hour=tickets.ack_max_per_domain_per_hour,
            ack_max_per_hour=tickets.ack_max_per_hour,
            max_participants=tickets.max_participants,
            max_recipients=settings.smtp.max_recipients,
            customer_close_words=tuple(tickets.customer_close_words),
        )

    def sender(self, queue: str | None) -> tuple[str, str]:
        """(from address, from name) of a queue's mail."""
        return self.senders.get(queue, self.default_sender) if queue else self.default_sender

    def notify_of(self, queue: str) -> tuple[str, ...]:
        """Whom "queue" means: its notify addresses (SPEC 7), else `[agents] notify`."""
        return self.queue_notify.get(queue, self.notify)
