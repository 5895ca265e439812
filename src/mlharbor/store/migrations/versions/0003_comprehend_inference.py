"""Comprehend inference: recognizer endpoints and entities detection jobs.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comprehend_endpoints",
        sa.Column("arn", sa.String(256), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("model_arn", sa.String(256)),
        sa.Column("current_units", sa.Integer, nullable=False, server_default="0"),
        sa.Column("data_access_role_arn", sa.String(2048)),
        sa.Column("desired_model_arn", sa.String(256), nullable=False),
        sa.Column("desired_units", sa.Integer, nullable=False),
        sa.Column("desired_data_access_role_arn", sa.String(2048)),
        sa.Column("artifact_uri", sa.String(1024)),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("client_token", sa.String(64)),
        sa.Column("request_hash", sa.String(64)),
        sa.UniqueConstraint("account_id", "region", "name", name="uq_comprehend_endpoint_name"),
    )
    op.create_index(
        "ix_comprehend_endpoints_owner", "comprehend_endpoints", ["account_id", "region", "created_at"]
    )
    op.create_index("ix_comprehend_endpoints_model", "comprehend_endpoints", ["desired_model_arn"])
    op.create_table(
        "entities_detection_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("arn", sa.String(256), nullable=False, unique=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("end_time", sa.Float),
        sa.Column("recognizer_arn", sa.String(256), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("client_token", sa.String(64)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_entities_detection_jobs_owner",
        "entities_detection_jobs",
        ["account_id", "region", "submitted_at"],
    )
    op.create_index("ix_entities_detection_jobs_status", "entities_detection_jobs", ["status"])
    op.create_index("ix_entities_detection_jobs_recognizer", "entities_detection_jobs", ["recognizer_arn"])


def downgrade() -> None:
    op.drop_table("entities_detection_jobs")
    op.drop_table("comprehend_endpoints")
