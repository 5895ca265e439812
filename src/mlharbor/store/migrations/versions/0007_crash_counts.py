"""Training and detection jobs count the crashes of their own workers apart from their attempts: a server
restart starts a new attempt but is not the work's fault, so it no longer uses up the work's retries.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("entity_recognizers", "entities_detection_jobs")


def upgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("crashes", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("crashes")
