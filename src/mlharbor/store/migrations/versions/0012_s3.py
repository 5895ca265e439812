"""S3: buckets (who owns each name) and multipart uploads with their parts. Objects themselves, with their
ETag and attributes, live in the object store.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "s3_buckets",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_s3_buckets_owner", "s3_buckets", ["account_id", "name"])
    op.create_table(
        "s3_uploads",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("bucket", sa.String(63), nullable=False),
        # Keys compare as bytes, as S3 orders them ("C" collation on PostgreSQL; SQLite compares bytes).
        sa.Column(
            "key", sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql"), nullable=False
        ),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("checksum_algorithm", sa.String(16)),
        sa.Column("checksum_type", sa.String(16)),
        sa.Column("initiated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_s3_uploads_bucket", "s3_uploads", ["bucket", "key", "initiated_at"])
    op.create_table(
        "s3_parts",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("part_number", sa.Integer, primary_key=True),
        sa.Column("blob_key", sa.String(256), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("checksums", sa.JSON, nullable=False),
        sa.Column("last_modified", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("s3_parts")
    op.drop_index("ix_s3_uploads_bucket", "s3_uploads")
    op.drop_table("s3_uploads")
    op.drop_index("ix_s3_buckets_owner", "s3_buckets")
    op.drop_table("s3_buckets")
