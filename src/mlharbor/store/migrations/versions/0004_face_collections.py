"""Rekognition face collections and their faces (descriptor vectors included).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "face_collections",
        sa.Column("arn", sa.String(512), primary_key=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("collection_id", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("face_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("account_id", "region", "collection_id", name="uq_face_collection_id"),
    )
    op.create_table(
        "faces",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("collection_arn", sa.String(512), nullable=False),
        sa.Column("face_id", sa.String(36), nullable=False, unique=True),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("external_image_id", sa.String(255)),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("box", sa.JSON, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("descriptor", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,  # a deleted maximum seq must never be handed out again
    )
    op.create_index("ix_faces_collection_face", "faces", ["collection_arn", "face_id"])
    op.create_index("ix_faces_collection_seq", "faces", ["collection_arn", "seq"])


def downgrade() -> None:
    op.drop_table("faces")
    op.drop_table("face_collections")
