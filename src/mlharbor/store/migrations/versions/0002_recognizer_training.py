"""Entity recognizer training: idempotency token, request fingerprint, attempt counter, model artifact.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entity_recognizers") as batch:
        batch.add_column(sa.Column("client_token", sa.String(64)))
        batch.add_column(sa.Column("request_hash", sa.String(64)))
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("artifact_uri", sa.String(1024)))
    op.create_index(
        "ix_entity_recognizers_token", "entity_recognizers", ["account_id", "region", "client_token"]
    )
    op.create_index("ix_entity_recognizers_status", "entity_recognizers", ["status"])


def downgrade() -> None:
    op.drop_index("ix_entity_recognizers_status", "entity_recognizers")
    op.drop_index("ix_entity_recognizers_token", "entity_recognizers")
    with op.batch_alter_table("entity_recognizers") as batch:
        batch.drop_column("artifact_uri")
        batch.drop_column("attempt")
        batch.drop_column("request_hash")
        batch.drop_column("client_token")
