"""Functions get a container (image, runtime), update and deletion times; claim/quota indexes.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # ADD COLUMN works in place on SQLite too: no table copy, the guard trigger stays.
    op.add_column("functions", sa.Column("image", sa.String(4096), nullable=True))
    op.add_column("functions", sa.Column("runtime", sa.String(32), nullable=True))
    op.add_column("functions", sa.Column("updated_at", TS, nullable=True))
    op.add_column("functions", sa.Column("deleted_at", TS, nullable=True))
    op.create_index("ix_invocations_claim", "invocations", ["state", "priority", "owner_uid", "id"])
    op.create_index("ix_invocations_owner_state", "invocations", ["owner_uid", "state"])


def downgrade() -> None:
    op.drop_index("ix_invocations_owner_state", "invocations")
    op.drop_index("ix_invocations_claim", "invocations")
    with op.batch_alter_table("functions") as batch:
        for col in ("deleted_at", "updated_at", "runtime", "image"):
            batch.drop_column(col)
