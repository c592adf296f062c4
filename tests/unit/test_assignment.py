"""Owner choice (SPEC 7): each strategy, its ties and fallbacks, a filter's owner first."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NoReturn

import pytest

from mailbridge.assignment import choose

MEMBERS = ("alice@example.com", "bob@example.com", "erik@example.com")


def turns(start: int = 0) -> Iterator[int]:
    return itertools.count(start)


def never() -> NoReturn:
    raise AssertionError("this strategy must not ask for it")


def test_round_robin_takes_members_in_order_from_the_cursor() -> None:
    counter = turns(1)
    owners = [
        choose(
            "round_robin",
            MEMBERS,
            take_turn=lambda: next(counter),
            open_counts=never,
            last_owner=never,
        )
        for _ in range(4)
    ]
    assert [a.owner for a in owners] == [MEMBERS[1], MEMBERS[2], MEMBERS[0], MEMBERS[1]]
    assert owners[0].rule == "assign round_robin -> bob@example.com"
    assert owners[0].detail == "round_robin -> bob@example.com"


def test_least_open_ties_go_by_member_order() -> None:
    counts = {"alice@example.com": 2, "bob@example.com": 1, "erik@example.com": 1}
    chosen = choose(
        "least_open",
        MEMBERS,
        take_turn=never,
        open_counts=lambda: counts,
        last_owner=never,
    )
    assert chosen.owner == "bob@example.com"
    # a member with no tickets at all counts as zero
    assert (
        choose(
            "least_open",
            MEMBERS,
            take_turn=never,
            open_counts=lambda: {"alice@example.com": 1},
            last_owner=never,
        ).owner
        == "bob@example.com"
    )


def test_sticky_keeps_the_previous_owner() -> None:
    chosen = choose(
        "sticky",
        MEMBERS,
        take_turn=never,
        open_counts=never,
        last_owner=lambda: "erik@example.com",
    )
    assert chosen.owner == "erik@example.com" and chosen.detail == "sticky -> erik@example.com"


@pytest.mark.parametrize("previous", [None, "gone@example.com"])
def test_sticky_falls_back_to_round_robin(previous: str | None) -> None:
    chosen = choose(
        "sticky",
        MEMBERS,
        take_turn=lambda: 0,
        open_counts=never,
        last_owner=lambda: previous,
    )
    assert chosen.owner == "alice@example.com"
    assert chosen.strategy == "round_robin"
    assert chosen.detail.endswith("round_robin -> alice@example.com")


def test_a_filters_owner_wins_and_uses_no_turn() -> None:
    chosen = choose(
        "round_robin",
        MEMBERS,
        take_turn=never,
        open_counts=never,
        last_owner=never,
        filter_owner="erik@example.com",
        filter_name="vip",
    )
    assert (
        chosen.owner == "erik@example.com"
        and chosen.rule == "assign filter vip -> erik@example.com"
    )


def test_none_leaves_it_unowned() -> None:
    chosen = choose(
        "none",
        MEMBERS,
        take_turn=never,
        open_counts=never,
        last_owner=never,
    )
    assert chosen.owner is None
