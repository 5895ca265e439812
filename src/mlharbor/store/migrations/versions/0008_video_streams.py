"""Kinesis Video streams (the control plane's records).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_streams",
        sa.Column("arn", sa.String(1024), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("stream_version", sa.String(64), nullable=False),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("device_name", sa.String(128)),
        sa.Column("media_type", sa.String(128)),
        sa.Column("kms_key_id", sa.String(2048)),
        sa.Column("retention_hours", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("account_id", "region", "name", name="uq_video_stream_name"),
    )


def downgrade() -> None:
    op.drop_table("video_streams")
