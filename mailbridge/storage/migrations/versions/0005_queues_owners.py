"""queues, owners, priority and tags on tickets; round-robin cursors (SPEC 7)

Existing tickets land in the first configured queue (handed in by `Store.upgrade` as the
`first_queue` attribute; `support` without a config), priority normal, unowned.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    config = op.get_context().config  # None only when run without an alembic Config
    first = config.attributes.get("first_queue", "support") if config else "support"
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("queue", sa.String(length=64), nullable=False, server_default=first)
        )
        batch_op.add_column(sa.Column("owner", sa.String(length=320), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal")
        )
        batch_op.create_index("ix_tickets_queue_status", ["queue", "status"], unique=False)
        batch_op.create_index("ix_tickets_owner_status", ["owner", "status"], unique=False)
    op.create_table(
        "ticket_tags",
        sa.Column(
            "ticket_number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["ticket_number"], ["tickets.number"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("ticket_number", "tag"),
    )
    op.create_index("ix_ticket_tags_tag", "ticket_tags", ["tag"], unique=False)
    op.create_table(
        "queue_cursors",
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("queue"),
    )


def downgrade() -> None:
    op.drop_table("queue_cursors")
    op.drop_index("ix_ticket_tags_tag", table_name="ticket_tags")
    op.drop_table("ticket_tags")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_owner_status")
        batch_op.drop_index("ix_tickets_queue_status")
        batch_op.drop_column("priority")
        batch_op.drop_column("owner")
        batch_op.drop_column("queue")
