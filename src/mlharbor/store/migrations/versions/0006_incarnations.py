"""Incarnations: every resource whose workers are fenced gets a creation identity, so a worker of a
deleted resource can never act for one created again under the same name (same ARN).

Revision ID: 0006
Revises: 0005
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("stream_processors", "entity_recognizers", "comprehend_endpoints", "entities_detection_jobs")


def upgrade() -> None:
    bind = op.get_bind()
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("incarnation", sa.String(32), nullable=False, server_default=""))
        table = sa.table(name, sa.column("arn", sa.String), sa.column("incarnation", sa.String))
        for (arn,) in bind.execute(sa.select(table.c.arn)).all():
            bind.execute(sa.update(table).where(table.c.arn == arn).values(incarnation=uuid.uuid4().hex))


def downgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("incarnation")
