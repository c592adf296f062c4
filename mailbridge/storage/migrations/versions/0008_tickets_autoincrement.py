"""SQLite: ticket numbers are never reused again (AUTOINCREMENT, lost when 0006 rebuilt the table)

0006 added columns that SQLite can only add by rebuilding the table (Alembic's batch mode), and the
rebuilt `tickets` lost its AUTOINCREMENT: the number of the newest ticket, once purged, was
given to the next one. This rebuilds it once more with AUTOINCREMENT and sets the high-water mark
to the highest number ever used: the tickets left, and the purged ones their tombstones remember.
PostgreSQL's sequence never went back: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 14:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "tickets", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    highest = bind.execute(
        sa.text(
            "SELECT max(coalesce((SELECT max(number) FROM tickets), 0),"
            " coalesce((SELECT max(ticket_number) FROM tombstones), 0))"
        )
    ).scalar()
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'tickets'"))
    bind.execute(
        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('tickets', :seq)"),
        {"seq": int(highest or 0)},
    )


def downgrade() -> None:
    pass  # AUTOINCREMENT only keeps numbers from coming back; the schema is otherwise the same
