"""tickets carry their SLA due times (SPEC 8): one indexed query finds breaches

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sla_name", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("first_response_due", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("next_response_due", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("resolution_due", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sla_due", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sla_breached", sa.String(length=100), nullable=True))
        # existing tickets are stale: the first sweep computes their due times
        batch_op.add_column(
            sa.Column("sla_stale", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.create_index(batch_op.f("ix_tickets_sla_due"), ["sla_due"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_sla_breached"), ["sla_breached"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_sla_stale"), ["sla_stale"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tickets_sla_stale"))
        batch_op.drop_index(batch_op.f("ix_tickets_sla_breached"))
        batch_op.drop_index(batch_op.f("ix_tickets_sla_due"))
        for column in (
            "sla_stale",
            "sla_breached",
            "sla_due",
            "resolution_due",
            "next_response_due",
            "first_response_due",
            "sla_name",
        ):
            batch_op.drop_column(column)
