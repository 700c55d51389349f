"""The first schema: functions, slots, invocations, their events, and the state guard.

The legal transitions are written out here, as they were when this revision was made: a
later change of ``faas_runtime.states`` needs a migration of its own (a unit test compares
the two).

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

TRANSITIONS = [
    ("DISPATCHED", "CANCELLED"), ("DISPATCHED", "EVICTED"), ("DISPATCHED", "FAILED"),
    ("DISPATCHED", "RUNNING"), ("DISPATCHED", "SUCCEEDED"), ("DISPATCHED", "TIMED_OUT"),
    ("EVICTED", "FAILED"), ("EVICTED", "QUEUED"),
    ("QUEUED", "CANCELLED"), ("QUEUED", "DISPATCHED"),
    ("RUNNING", "CANCELLED"), ("RUNNING", "EVICTED"), ("RUNNING", "FAILED"),
    ("RUNNING", "SUCCEEDED"), ("RUNNING", "TIMED_OUT"),
]

GUARD_SQLITE = """
CREATE TRIGGER invocation_state_guard
BEFORE UPDATE OF state ON invocations
WHEN OLD.state != NEW.state AND NOT EXISTS (
    SELECT 1 FROM state_transitions WHERE from_state = OLD.state AND to_state = NEW.state)
BEGIN
    SELECT RAISE(ABORT, 'illegal invocation state transition');
END
"""

GUARD_POSTGRES = [
    """
CREATE OR REPLACE FUNCTION invocation_state_guard() RETURNS trigger AS $$
BEGIN
    IF OLD.state <> NEW.state AND NOT EXISTS (
        SELECT 1 FROM state_transitions WHERE from_state = OLD.state AND to_state = NEW.state) THEN
        RAISE EXCEPTION 'illegal invocation state transition % -> %', OLD.state, NEW.state;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql
""",
    """
CREATE TRIGGER invocation_state_guard BEFORE UPDATE OF state ON invocations
FOR EACH ROW EXECUTE FUNCTION invocation_state_guard()
""",
]


def upgrade() -> None:
    op.create_table(
        "functions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner_uid", sa.Integer, nullable=False),
        sa.Column("owner_gid", sa.Integer, nullable=False),
        sa.Column("entrypoint", sa.String(512), nullable=False),
        sa.Column("code_dir", sa.String(4096), nullable=False),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("mem_mb", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_functions"),
        sa.UniqueConstraint("owner_uid", "name", name="uq_functions_owner_uid_name"),
    )
    op.create_table(
        "slots",
        sa.Column("id", sa.String(300), nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("owner_uid", sa.Integer, nullable=False),
        sa.Column("slurm_cpus", sa.JSON, nullable=False),
        sa.Column("os_cpus", sa.JSON, nullable=False),
        sa.Column("mem_mb", sa.Integer, nullable=False),
        sa.Column("end_time", sa.Float, nullable=True),
        sa.Column("until_min", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lent_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoke_reason", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_slots"),
    )
    op.create_index("ix_slots_job_id", "slots", ["job_id"])
    op.create_index("ix_slots_node", "slots", ["node"])
    op.create_index("ix_slots_state", "slots", ["state"])
    op.create_table(
        "invocations",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("function_id", sa.Integer, nullable=False),
        sa.Column("owner_uid", sa.Integer, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("slot_id", sa.String(300), nullable=True),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("slurm_cpus", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("os_cpus", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("mem_mb", sa.Integer, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("ran_on_cpus", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("dispatched_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invocations"),
        sa.ForeignKeyConstraint(["function_id"], ["functions.id"], name="fk_invocations_function_id_functions"),
    )
    for col in ("function_id", "owner_uid", "state", "slot_id"):
        op.create_index(f"ix_invocations_{col}", "invocations", [col])
    op.create_table(
        "invocation_events",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("invocation_id", sa.Integer, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("reason", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invocation_events"),
        sa.ForeignKeyConstraint(["invocation_id"], ["invocations.id"],
                                name="fk_invocation_events_invocation_id_invocations"),
    )
    op.create_index("ix_invocation_events_invocation_id", "invocation_events", ["invocation_id"])
    transitions = op.create_table(
        "state_transitions",
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("from_state", "to_state", name="pk_state_transitions"),
    )
    op.bulk_insert(transitions, [{"from_state": a, "to_state": b} for a, b in TRANSITIONS])
    if op.get_bind().dialect.name == "postgresql":
        for stmt in GUARD_POSTGRES:
            op.execute(stmt)
    else:
        op.execute(GUARD_SQLITE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS invocation_state_guard ON invocations")
        op.execute("DROP FUNCTION IF EXISTS invocation_state_guard()")
    else:
        op.execute("DROP TRIGGER IF EXISTS invocation_state_guard")
    for table in ("state_transitions", "invocation_events", "invocations", "slots", "functions"):
        op.drop_table(table)
