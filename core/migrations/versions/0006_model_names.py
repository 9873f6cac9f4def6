"""Model names belong to a key: `model_names` (the claim: owner and visibility) and `model_grants` (read access to
a private name for another key). Names already published are claimed by the owner of their first version, public,
so that nothing served before the upgrade stops being served.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_model_names"),
    )
    op.create_table(
        "model_grants",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("grantee", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["name"], ["model_names.name"], name="fk_model_grants_name_model_names", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("name", "grantee", name="pk_model_grants"),
    )
    conn = op.get_bind()
    versions = sa.table("model_versions", sa.column("name"), sa.column("version"), sa.column("owner"))
    first = {}
    for name, _version, owner in conn.execute(
        sa.select(versions.c.name, versions.c.version, versions.c.owner).order_by(versions.c.name, versions.c.version)
    ):
        first.setdefault(name, owner)
    if first:
        names = sa.table(
            "model_names", sa.column("name"), sa.column("owner"), sa.column("visibility"), sa.column("created_at")
        )
        stamp = datetime.now(UTC)
        conn.execute(
            sa.insert(names),
            [{"name": n, "owner": o, "visibility": "public", "created_at": stamp} for n, o in first.items()],
        )


def downgrade() -> None:
    op.drop_table("model_grants")
    op.drop_table("model_names")
