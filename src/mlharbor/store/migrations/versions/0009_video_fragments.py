"""Kinesis Video fragments: the index of what PutMedia stored in the object store.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_fragments",
        sa.Column("stream_arn", sa.String(1024), primary_key=True),
        sa.Column("fragment_number", sa.String(64), primary_key=True),
        sa.Column("producer_ts", sa.Float, nullable=False),
        sa.Column("server_ts", sa.Float, nullable=False),
        sa.Column("fragment_timecode", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("header_len", sa.Integer, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("blob_uri", sa.String(2048), nullable=False),
        sa.Column("persisted", sa.Boolean, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_video_fragments_producer", "video_fragments", ["stream_arn", "producer_ts"])
    op.create_index("ix_video_fragments_server", "video_fragments", ["stream_arn", "server_ts"])
    op.create_index("ix_video_fragments_expiry", "video_fragments", ["expires_at"])


def downgrade() -> None:
    op.drop_table("video_fragments")
