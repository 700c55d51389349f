"""High availability: the active co-scheduler's epoch (coscheduler/leader.py), one row.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    leader = op.create_table(
        "coscheduler_leader",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(300), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_coscheduler_leader"),
    )
    op.bulk_insert(leader, [{"id": 1, "epoch": 0, "holder": None, "since": None}])


def downgrade() -> None:
    op.drop_table("coscheduler_leader")
