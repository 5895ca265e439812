"""SNS: topics, subscriptions and the delivery outbox (messages and their deliveries).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sns_topics",
        sa.Column("arn", sa.String(512), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("subscriptions_deleted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("account_id", "region", "name", name="uq_sns_topic_name"),
    )
    op.create_table(
        "sns_subscriptions",
        sa.Column("arn", sa.String(600), primary_key=True),
        sa.Column("topic_arn", sa.String(512), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("endpoint_key", sa.String(64)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("token_expires_at", sa.Float, nullable=False),
        sa.Column("authenticated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("unsubscribe_needs_auth", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("topic_arn", "endpoint_key", name="uq_sns_subscription_endpoint"),
    )
    op.create_index("ix_sns_subscriptions_owner", "sns_subscriptions", ["account_id", "region", "arn"])
    op.create_index("ix_sns_subscriptions_token", "sns_subscriptions", ["topic_arn", "token"])
    op.create_index("ix_sns_subscriptions_expiry", "sns_subscriptions", ["status", "token_expires_at"])
    op.create_table(
        "sns_messages",
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("topic_arn", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("structure", sa.String(8)),
        sa.Column("attributes", sa.JSON),
        sa.Column("token", sa.String(128)),
        sa.Column("timestamp", sa.String(32), nullable=False),
        sa.Column("signature_version", sa.String(1), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "sns_deliveries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("subscription_arn", sa.String(600), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("raw", sa.Boolean, nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("claim", sa.String(36)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_sns_deliveries_due", "sns_deliveries", ["due_at"])
    op.create_index("ix_sns_deliveries_message", "sns_deliveries", ["message_id"])


def downgrade() -> None:
    for table in ("sns_deliveries", "sns_messages", "sns_subscriptions", "sns_topics"):
        op.drop_table(table)
