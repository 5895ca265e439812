"""Kinesis Data Streams: streams, their shards and their records.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kinesis_streams",
        sa.Column("stream_id", sa.String(32), primary_key=True),
        sa.Column("arn", sa.String(1024), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("retention_hours", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("encryption_type", sa.String(8), nullable=False),
        sa.Column("key_id", sa.String(2048)),
        sa.Column("max_record_kib", sa.Integer, nullable=False),
        sa.Column("distribution", sa.String(24), nullable=False),
        sa.UniqueConstraint("account_id", "region", "name", name="uq_kinesis_stream_name"),
    )
    op.create_table(
        "kinesis_shards",
        sa.Column("stream_id", sa.String(32), primary_key=True),
        sa.Column("shard_index", sa.Integer, primary_key=True),
        sa.Column("start_hash", sa.String(40), nullable=False),
        sa.Column("end_hash", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("next_sequence", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kinesis_records",
        sa.Column("stream_id", sa.String(32), primary_key=True),
        sa.Column("shard_index", sa.Integer, primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("partition_key", sa.String(256), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("arrival", sa.Float, nullable=False),
    )
    op.create_index("ix_kinesis_records_arrival", "kinesis_records", ["stream_id", "shard_index", "arrival"])


def downgrade() -> None:
    op.drop_table("kinesis_records")
    op.drop_table("kinesis_shards")
    op.drop_table("kinesis_streams")
