"""Invocations keep their function's traceback and the end of its stdout and stderr.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN works in place on SQLite too: no table copy, the guard trigger stays.
    op.add_column("invocations", sa.Column("traceback", sa.Text(), nullable=True))
    op.add_column("invocations", sa.Column("output", sa.Text(), nullable=True))


def downgrade() -> None:
    # DROP COLUMN in place (SQLite 3.35+), so the invocations' guard trigger stays.
    op.drop_column("invocations", "output")
    op.drop_column("invocations", "traceback")
