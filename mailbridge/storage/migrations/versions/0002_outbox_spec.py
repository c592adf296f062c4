"""outbox rows carry what to write (spec); the sender writes the bytes before delivery

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spec", sa.Text(), nullable=True))


def downgrade() -> None:
    # rows still waiting for their bytes cannot be written by the older code: fail them, loudly
    op.execute(
        "UPDATE outbox SET state = 'failed', last_error = 'not written before a schema downgrade' "
        "WHERE raw IS NULL AND spec IS NOT NULL AND state = 'queued'"
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("spec")
