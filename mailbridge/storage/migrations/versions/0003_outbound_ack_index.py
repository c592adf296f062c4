"""outbox index by kind and creation time: the hourly acknowledgement limits count in it

Revision ID: 0003_outbound
Revises: 0002
Create Date: 2026-12-01 22:00:00
"""

from alembic import op

revision = "0003_outbound"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the per-domain and total counts read only the last hour's acknowledgements (at most
    # `ack_max_per_hour` of them), not every acknowledgement ever queued
    op.create_index("ix_outbox_kind_created", "outbox", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_kind_created", table_name="outbox")
