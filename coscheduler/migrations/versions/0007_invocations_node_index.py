"""Invocations get an index on (node, state): the work on one node.

A HELLO requeues what its node's agent does not hold, a silent agent's work is requeued,
and heartbeats are checked against the work the database places on their nodes: each
asks for the invocations on some nodes in DISPATCHED or RUNNING. Without this index each
question read every invocation on a slot (tens of thousands on a cluster of thousands of
nodes), once per HELLO: registering 2,000 agents spent more time there than anywhere.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database an early release made with create_all() and stamped 0001 may lack the
    # column (as in 0003: such databases are upgraded, not refused).
    if "node" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("invocations")}:
        op.create_index("ix_invocations_node_state", "invocations", ["node", "state"])


def downgrade() -> None:
    op.drop_index("ix_invocations_node_state", "invocations", if_exists=True)
