"""Initial schema: server state, tags, stream processors, entity recognizers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "tags",
        sa.Column("resource_arn", sa.String(2048), primary_key=True),
        sa.Column("tag_key", sa.String(128), primary_key=True),
        sa.Column("tag_value", sa.String(256), nullable=False),
    )
    op.create_table(
        "stream_processors",
        sa.Column("arn", sa.String(2048), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("input_stream_arn", sa.String(2048), nullable=False),
        sa.Column("output_stream_arn", sa.String(2048)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.UniqueConstraint("account_id", "region", "name", name="uq_stream_processor_name"),
    )
    op.create_index("ix_stream_processors_owner", "stream_processors", ["account_id", "region", "created_at"])
    op.create_table(
        "entity_recognizers",
        sa.Column("arn", sa.String(256), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("version_name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON),
        sa.UniqueConstraint("account_id", "region", "name", "version_name", name="uq_entity_recognizer_name"),
    )
    op.create_index(
        "ix_entity_recognizers_owner", "entity_recognizers", ["account_id", "region", "submitted_at"]
    )


def downgrade() -> None:
    op.drop_table("entity_recognizers")
    op.drop_table("stream_processors")
    op.drop_table("tags")
    op.drop_table("server_state")
