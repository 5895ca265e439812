"""Stream processor sessions: attempt counter, session id, the start request, worker restarts.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stream_processors") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("session_id", sa.String(64)))
        batch.add_column(sa.Column("session", sa.JSON))
        batch.add_column(sa.Column("restarts", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_stream_processors_status", "stream_processors", ["status"])


def downgrade() -> None:
    op.drop_index("ix_stream_processors_status", "stream_processors")
    with op.batch_alter_table("stream_processors") as batch:
        batch.drop_column("restarts")
        batch.drop_column("session")
        batch.drop_column("session_id")
        batch.drop_column("attempt")
