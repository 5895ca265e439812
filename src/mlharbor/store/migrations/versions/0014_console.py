"""The web console: live views of stream processors, training curves, where indexed faces came from.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "live_views",
        sa.Column("processor_arn", sa.String(2048), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("watched_until", sa.Float, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("analysed_at", sa.Float),
        sa.Column("meta", sa.JSON),
        sa.Column("jpeg", sa.LargeBinary),
    )
    op.add_column("entity_recognizers", sa.Column("curve", sa.JSON))
    op.add_column("faces", sa.Column("source", sa.String(2048)))


def downgrade() -> None:
    op.drop_column("faces", "source")
    op.drop_column("entity_recognizers", "curve")
    op.drop_table("live_views")
