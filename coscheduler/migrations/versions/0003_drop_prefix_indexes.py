"""Drop the invocations' single-column indexes on state and owner_uid.

Each is the leading column of a composite index (``ix_invocations_claim`` on state,
priority, owner_uid, id; ``ix_invocations_owner_state`` on owner_uid, state) that answers
the same lookups. Every state change writes a new row version into every index of the
table, so two indexes less make each transition cheaper; and ``ix_invocations_state``
was the index that stale statistics let the planner choose for ``WHERE id = ? AND
state = ?``, reading every row in that state instead of one by key.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # if_exists: a database that an early release made with create_all() and that was
    # stamped 0001 may lack them.
    op.drop_index("ix_invocations_state", "invocations", if_exists=True)
    op.drop_index("ix_invocations_owner_uid", "invocations", if_exists=True)


def downgrade() -> None:
    op.create_index("ix_invocations_owner_uid", "invocations", ["owner_uid"])
    op.create_index("ix_invocations_state", "invocations", ["state"])
