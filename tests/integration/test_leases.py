"""Leases on SQLite and PostgreSQL: one holder at a time; a restarted node reclaims its own."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mailbridge.storage import repo

TTL = timedelta(seconds=30)
NAME = "imap:support:INBOX"


def take(app: Any, owner: str, incarnation: str, gone: set[str] | None = None) -> bool:
    """`gone`: the incarnations the caller knows to have ended (None: it does not check)."""
    reclaim = None if gone is None else gone.__contains__
    with app.store.unit() as session:
        return repo.acquire_lease(
            session, NAME, owner, app.clock(), TTL, incarnation=incarnation, reclaim=reclaim
        )


def holder(app: Any) -> tuple[str, str | None] | None:
    with app.store.unit() as session:
        found = repo.lease_holder(session, NAME)
    return found and found[:2]


def test_one_holder_until_expiry(app: Any) -> None:
    assert take(app, "mb1", "p1")
    assert take(app, "mb1", "p1")  # renewal
    assert not take(app, "mb2", "p9", gone={"p1"})  # another node never reclaims early
    app.clock.advance(seconds=31)
    assert take(app, "mb2", "p9")
    assert holder(app) == ("mb2", "p9")


def test_a_restarted_node_reclaims_only_from_a_process_that_is_gone(app: Any) -> None:
    assert take(app, "mb1", "p1")
    # a second live process of the same node waits like any other node
    assert not take(app, "mb1", "p2", gone=set())
    assert not take(app, "mb1", "p2")
    assert holder(app) == ("mb1", "p1")
    # the first one died: its successor takes over at once, long before the lease expires
    assert take(app, "mb1", "p2", gone={"p1"})
    assert holder(app) == ("mb1", "p2")
    # and the dead one cannot come back by renewing
    assert not take(app, "mb1", "p1")


def test_release_frees_only_the_callers_own_lease(app: Any) -> None:
    assert take(app, "mb1", "p2")
    with app.store.unit() as session:
        repo.release_lease(session, NAME, "mb1", "p1")  # a late release by an earlier process
    assert holder(app) == ("mb1", "p2")
    with app.store.unit() as session:
        repo.release_lease(session, NAME, "mb1", "p2")
    assert holder(app) is None
    assert take(app, "mb2", "p9")
