"""Bytes of object storage each job's run files and each published model version use (`storage_bytes`), kept by
the worker as it uploads and prunes them, so that a key's usage is one SQL sum (core/quota.py). Rows from before
the upgrade count 0 until their job writes again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("jobs", "model_versions")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("storage_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:  # SQLite drops a column by copying the table
            batch.drop_column("storage_bytes")
