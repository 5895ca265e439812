"""Work leases: which server process runs each piece of long work, so several servers share one database.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

IN_FLIGHT = {
    "entity_recognizers": ("SUBMITTED", "TRAINING", "STOP_REQUESTED"),
    "entities_detection_jobs": ("SUBMITTED", "IN_PROGRESS", "STOP_REQUESTED"),
    "stream_processors": ("STARTING", "RUNNING", "STOPPING"),
}


def upgrade() -> None:
    op.create_table(
        "work_leases",
        sa.Column("work_id", sa.String(1024), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("progress", sa.JSON),
    )
    op.create_index("ix_work_leases_kind", "work_leases", ["kind"])
    op.create_index("ix_work_leases_owner", "work_leases", ["owner"])
    # Work that was in flight under the previous version has no lease, and the supervisor starts unleased work
    # under its current attempt: a new attempt fences out any worker the old server left still exiting.
    for table, states in IN_FLIGHT.items():
        listed = ", ".join(f"'{s}'" for s in states)
        op.execute(
            f"UPDATE {table} SET attempt = attempt + 1, version = version + 1 WHERE status IN ({listed})"
        )


def downgrade() -> None:
    op.drop_table("work_leases")
