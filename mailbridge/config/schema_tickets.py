"""`[agents]`, `[tickets]` and `[[rules]]`: who the agents are, how tickets are numbered and
acknowledged, and what happens to tickets left idle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, Strict, model_validator

from mailbridge import lifecycle
from mailbridge.config.types import (
    ADDRESS,
    Address,
    AddressOrDomain,
    Bool,
    Count,
    Domain,
    Duration,
    FilePath,
    Priority,
    Section,
    reject,
)

if TYPE_CHECKING:
    StatusName = str
else:
    # lifecycle's status values as a Literal, in its order: a rule's `when` stays a plain str,
    # and a wrong one is answered with the choices
    StatusName = Literal[lifecycle.STATUSES]
RuleAction = Literal["resolved", "closed", "purge", "remind", "escalate"]


def _subject_tag(value: str) -> str:
    try:
        ok = "{number}" in value and value.format(number=1) != value
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise ValueError("must contain {number} and no other {...} fields, e.g. '[#{number}]'")
    return value


class AgentsSettings(Section):
    addresses: tuple[Address, ...] = ()
    domains: tuple[Domain, ...] = ()
    trusted_authserv_ids: tuple[str, ...] = ()
    notify: tuple[Address, ...] = ()
    display_names: Bool = True  # relayed replies show the agent's name


class TicketsSettings(Section):
    subject_tag: Annotated[str, AfterValidator(_subject_tag)] = "[#{number}]"
    plus_separator: Literal["+", "-", "_", ".", "="] = "+"
    acknowledge: Bool = False
    ack_template: FilePath | None = None
    ack_max_per_sender_per_hour: Annotated[int, Strict(), Field(ge=0)] = 3
    # backscatter: forged senders spread over one domain, or over many, are bounded too
    ack_max_per_domain_per_hour: Annotated[int, Strict(), Field(ge=0)] = 20
    ack_max_per_hour: Annotated[int, Strict(), Field(ge=0)] = 200
    max_new_per_sender_per_hour: Count = 20
    # a blocked entry is a whole domain when written `@example.com`
    blocked_senders: tuple[AddressOrDomain, ...] = ()
    max_participants: Count = 20  # per ticket, the customer included: whom a relay reaches
    # a customer reply to a resolved ticket whose first line is one of these closes it (SPEC 8)
    customer_close_words: tuple[Annotated[str, Field(min_length=1)], ...] = (
        "close",
        "#close",
        "solved",
    )


# which statuses a rule may act on: the rest are refused by the lifecycle table (SPEC 1)
_RULE_FROM = lifecycle.RULE_FROM


class Rule(Section):
    name: str
    when: StatusName | tuple[StatusName, ...]  # one status or a list (SPEC 8)
    idle_for: Duration
    then: RuleAction
    notify: Bool = False
    # narrow a rule to some tickets (SPEC 8); queue and priority exist with queues (SPEC 7)
    queue: str | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()
    # the mail of remind / escalate, and of a status rule's notify; default: bundled templates
    template: FilePath | None = None
    # escalate: addresses, and the words "owner" (the ticket's owner) and "queue" (its notify)
    to: tuple[str, ...] = ()
    # escalate: the ticket is unowned and assigned again by its queue's strategy, skipping
    # the previous owner (SPEC 7, 8)
    reassign: Bool = False

    @property
    def statuses(self) -> tuple[str, ...]:
        return (self.when,) if isinstance(self.when, str) else tuple(self.when)

    @model_validator(mode="after")
    def _check(self) -> Rule:
        allowed = _RULE_FROM[self.then]
        wrong = [s for s in self.statuses if s not in allowed]
        if wrong or not self.statuses:
            choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            reject("rules", [(("then",), f"{self.then} needs when = {choices}")])
        if self.then == "escalate" and not self.to:
            reject("rules", [(("to",), 'escalate needs to = addresses, "owner" or "queue"')])
        if self.reassign and self.then != "escalate":
            reject("rules", [(("reassign",), 'reassign needs then = "escalate"')])
        bad = [t for t in self.to if t not in ("owner", "queue") and not ADDRESS.fullmatch(t)]
        if bad:
            reject("rules", [(("to",), f"not an address, owner or queue: {bad[0]!r}")])
        return self
