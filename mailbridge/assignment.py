"""Who owns a new ticket (SPEC section 7): a filter's owner, else the queue's strategy.

PURE. What the strategies need from storage comes in as callables, so only the strategy in use
asks for it: `take_turn()` advances the queue's round-robin cursor (in the creating transaction,
which makes it correct with several nodes) and returns the turn number; `open_counts()` the
tickets each agent owns in new/open/answered/postponed; `last_owner()` the owner of this
customer's most recent ticket in the queue from the last 90 days.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

STRATEGIES = ("none", "round_robin", "least_open", "sticky")
STICKY_WINDOW = timedelta(days=90)


@dataclass(frozen=True, slots=True)
class Assignment:
    owner: str | None
    strategy: str  # round_robin | least_open | sticky | filter | none
    detail: str  # the event's detail, e.g. "round_robin -> erik@example.com"

    @property
    def rule(self) -> str:
        return f"assign {self.detail}"


def round_robin(members: Sequence[str], turn: int) -> str:
    return members[turn % len(members)]


def least_open(members: Sequence[str], counts: Mapping[str, int]) -> str:
    # min() keeps the first of equals: ties go by member order
    return min(members, key=lambda m: counts.get(m, 0))


def choose(
    strategy: str,
    members: Sequence[str],
    *,
    take_turn: Callable[[], int],
    open_counts: Callable[[], Mapping[str, int]],
    last_owner: Callable[[], str | None],
    filter_owner: str | None = None,
    filter_name: str | None = None,
) -> Assignment:
    if filter_owner is not None:
        return Assignment(filter_owner, "filter", f"filter {filter_name} -> {filter_owner}")
    if strategy == "none":
        return Assignment(None, "none", "none: unassigned")
    if not members:
        return Assignment(None, "none", f"{strategy}: no members, unassigned")
    if strategy == "round_robin":
        owner = round_robin(members, take_turn())
        return Assignment(owner, "round_robin", f"round_robin -> {owner}")
    if strategy == "least_open":
        owner = least_open(members, open_counts())
        return Assignment(owner, "least_open", f"least_open -> {owner}")
    if strategy == "sticky":
        previous = last_owner()
        if previous is not None and previous in members:
            return Assignment(previous, "sticky", f"sticky -> {previous}")
        owner = round_robin(members, take_turn())
        why = "no recent owner" if previous is None else f"{previous} is no longer a member"
        return Assignment(owner, "round_robin", f"sticky ({why}), round_robin -> {owner}")
    raise ValueError(f"unknown assignment strategy {strategy!r}")
