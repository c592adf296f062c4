"""Hourly limits on queued outbox rows (the acknowledgement limits): per recipient, per domain
and in all, over the sliding hour before now.

Counting a sliding hour's rows reads as many of them as there are, up to the limit, for every
new ticket; with limits far above the traffic (a desk that raised them, a load test) that is
every acknowledgement of the hour, three times. So each queued row of a `COUNTED` kind also adds
one to a counter per (kind, key, hour) in the same transaction. The counters of the hours from
`since` on are an upper bound of the rows queued since `since`: while the bound is below a
limit, that limit is surely not reached and nothing is counted. Only near a limit are the rows
counted as before, so the limit stays exactly a sliding hour (not a clock hour).

Each database connection adds to counter rows of its own (`shard`, random per connection), so
two transactions never wait on each other's counters: on PostgreSQL one shared row per hour
would serialise every transaction that acknowledges, and rows taken in different orders by
two batches could deadlock.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, delete, func, select

from mailbridge.storage.models import Outbox, OutboxCount, table_of
from mailbridge.storage.repo.base import count_up_to
from mailbridge.storage.uow import Session

COUNTED = frozenset({"ack"})  # the kinds an hourly limit reads
ALL = "*"
# counter rows are dropped a day after their hour: far more than the hour a limit reads, so
# a node whose clock is behind never reads a counter another node dropped already
RETAIN_HOURS = 24
_SHARD = "mailbridge.outbox_counts.shard"
_PRUNED = "mailbridge.outbox_counts.pruned"
_COUNTS = table_of(OutboxCount)

Scope = Literal["recipient", "domain", "all"]


def hour_of(at: datetime) -> int:
    return int(at.timestamp()) // 3600


def domain_key(rcpt_key: str) -> str:
    return "@" + rcpt_key.rpartition("@")[2].lower()


def add_counts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Count the outbox rows about to be queued (`kind`, `rcpt_key`, `created_at`) that a
    limit reads, in the caller's transaction."""
    counts: Counter[tuple[str, str, int]] = Counter()
    for row in rows:
        if row["kind"] in COUNTED:
            hour, kind, key = hour_of(row["created_at"]), row["kind"], row["rcpt_key"]
            counts.update([(kind, key, hour), (kind, domain_key(key), hour), (kind, ALL, hour)])
    if not counts:
        return
    conn = session.connection()
    shard = conn.info.get(_SHARD) or conn.info.setdefault(_SHARD, 1 + secrets.randbits(62))
    # a batch adds them up and writes them with its other rows
    session.rows.add_counts(
        [
            {"kind": kind, "key": key, "hour": hour, "shard": shard, "n": n}
            for (kind, key, hour), n in counts.items()
        ]
    )
    newest = max(hour for _, _, hour in counts)
    if newest > conn.info.get(_PRUNED, 0):
        conn.execute(_PRUNE, {"before": newest - RETAIN_HOURS})
        conn.info[_PRUNED] = newest


def limit_reached(
    session: Session, kind: str, rcpt_key: str, since: datetime, limits: tuple[int, int, int]
) -> Scope | None:
    """Which of the limits (to `rcpt_key`, to its domain, in all; in this order) the rows of
    `kind` queued since `since` reach, if any."""
    keys = (rcpt_key, domain_key(rcpt_key), ALL)
    bounds = _bounds(session, kind, keys, hour_of(since))
    exact = (count_to, count_domain, count_all)
    scopes: tuple[Scope, ...] = ("recipient", "domain", "all")
    for key, limit, count, scope in zip(keys, limits, exact, scopes, strict=True):
        if bounds.get(key, 0) < limit:
            continue
        session.rows.flush()  # the exact count must see the rows a batch still holds
        if count(session, kind, rcpt_key, since, limit) >= limit:
            return scope
    return None


def _bounds(session: Session, kind: str, keys: tuple[str, str, str], hour: int) -> dict[str, int]:
    """The counters' sums from `hour` on, written and held. Inside a batch the written sums are
    read once per key (they change only when the batch writes, which clears `memo`); on
    PostgreSQL another node's counts of those milliseconds are missed, as they are anyway
    until that node commits."""
    memo = session.rows.memo
    missing = [k for k in keys if (kind, k, hour) not in memo]
    if missing:
        params = {"kind": kind, "keys": missing, "hour": hour}
        found = {key: int(n) for key, n in session.connection().execute(_BOUNDS, params)}
        for k in missing:
            memo[(kind, k, hour)] = found.get(k, 0)
    held = session.rows.held_counts(kind, keys, hour)
    return {k: memo[(kind, k, hour)] + held.get(k, 0) for k in keys}


# --- the rows themselves: exact, and read only near a limit ---------------------------------

_OUTBOX_KIND = select(Outbox.id).where(
    Outbox.kind == bindparam("kind"), Outbox.created_at >= bindparam("since")
)
# built once: building a statement costs more than running it
_COUNT_TO = count_up_to(_OUTBOX_KIND.where(Outbox.rcpt_key == bindparam("rcpt_key")))
_COUNT_DOMAIN = count_up_to(_OUTBOX_KIND.where(Outbox.rcpt_key.like(bindparam("p"), escape="\\")))
_COUNT_ALL = count_up_to(_OUTBOX_KIND)


def count_to(session: Session, kind: str, rcpt_key: str, since: datetime, at_most: int) -> int:
    """Rows of `kind` to `rcpt_key` queued since `since`, counted up to `at_most`."""
    params = {"kind": kind, "rcpt_key": rcpt_key, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_TO, params) or 0


def count_domain(session: Session, kind: str, rcpt_key: str, since: datetime, at_most: int) -> int:
    """Rows of `kind` whose first recipient is at `rcpt_key`'s domain, queued since `since`."""
    domain = rcpt_key.rpartition("@")[2]
    pattern = "%@" + domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params = {"kind": kind, "p": pattern, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_DOMAIN, params) or 0


def count_all(session: Session, kind: str, rcpt_key: str, since: datetime, at_most: int) -> int:
    """Rows of `kind` queued since `since` (`rcpt_key` is not read), counted up to `at_most`."""
    params = {"kind": kind, "since": since, "at_most": at_most}
    return session.scalar(_COUNT_ALL, params) or 0


# --- the counters ---------------------------------------------------------------------------

_BOUNDS = (
    select(_COUNTS.c.key, func.sum(_COUNTS.c.n))
    .where(
        _COUNTS.c.kind == bindparam("kind"),
        _COUNTS.c.key.in_(bindparam("keys", expanding=True)),
        _COUNTS.c.hour >= bindparam("hour"),
    )
    .group_by(_COUNTS.c.key)
)
_PRUNE = delete(_COUNTS).where(_COUNTS.c.hour < bindparam("before"))
