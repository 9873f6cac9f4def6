"""Uploaded datasets: a row per dataset, naming its content-addressed file in object storage; and, on each job, the
uploaded dataset it trains on, so that a dataset in use is not deleted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("name", sa.String(64), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("owner", "name", name="uq_datasets_owner"),
    )
    op.create_index("ix_datasets_owner", "datasets", ["owner"])
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"])
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])
    op.add_column("jobs", sa.Column("dataset_id", sa.String(64), nullable=True))
    op.create_index("ix_jobs_dataset_id", "jobs", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_dataset_id", table_name="jobs")
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+): a batch copy of `jobs` would cascade to its attempts.
    op.drop_column("jobs", "dataset_id")
    op.drop_table("datasets")
