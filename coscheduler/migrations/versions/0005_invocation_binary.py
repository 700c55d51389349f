"""Invocations may carry a binary payload and value (opaque bytes: the Python API's).

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN in place (SQLite too): no table copy, the guard trigger stays.
    op.add_column("invocations", sa.Column("payload_bin", sa.LargeBinary(), nullable=True))
    op.add_column("invocations", sa.Column("result_bin", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("invocations", "result_bin")
    op.drop_column("invocations", "payload_bin")
