"""hourly counters of acknowledgements per recipient, domain and in all (repo/limits.py): the
limits count rows only when near them

The acknowledgements of the day before the newest one are counted into the new table, so a limit
reached before the upgrade is still reached after it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 14:00:00
"""

from collections import Counter
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_OUTBOX = sa.table(
    "outbox",
    sa.column("kind", sa.String()),
    sa.column("rcpt_key", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    counts = op.create_table(
        "outbox_counts",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=330), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("shard", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", "hour", "shard"),
    )
    op.create_index("ix_outbox_counts_hour", "outbox_counts", ["hour"], unique=False)
    conn = op.get_bind()
    acks = _OUTBOX.c.kind == "ack"
    newest = conn.execute(sa.select(sa.func.max(_OUTBOX.c.created_at)).where(acks)).scalar()
    if newest is None:
        return
    since = _utc(newest) - timedelta(hours=25)
    found: Counter[tuple[str, int]] = Counter()
    rows = conn.execute(
        sa.select(_OUTBOX.c.rcpt_key, _OUTBOX.c.created_at).where(
            acks, _OUTBOX.c.created_at >= since
        )
    )
    for rcpt_key, created_at in rows:
        hour = int(_utc(created_at).timestamp()) // 3600
        domain = "@" + rcpt_key.rpartition("@")[2].lower()
        found.update([(rcpt_key, hour), (domain, hour), ("*", hour)])
    if found:
        # shard 0 is nobody's: connections draw theirs from 1 up
        op.bulk_insert(
            counts,
            [
                {"kind": "ack", "key": key, "hour": hour, "shard": 0, "n": n}
                for (key, hour), n in found.items()
            ],
        )


def _utc(value: datetime | str) -> datetime:
    """SQLite hands back naive UTC values (or, from a raw column, their ISO text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def downgrade() -> None:
    op.drop_index("ix_outbox_counts_hour", table_name="outbox_counts")
    op.drop_table("outbox_counts")
