"""The database's tables as ORM models, and the UTC timestamp type they use.

Owns the schema as Python sees it: ``Base.metadata`` (constraint names fixed by
``NAMING``), which the Alembic migrations in ``coscheduler/migrations`` build and are
checked against. Functions, slots (capacity a batch job lends), invocations with their
history (``InvocationEvent``), and ``state_transitions``: the legal state changes, filled
from ``faas_runtime.states``, that the database's guard trigger reads.

May not touch: sessions or transactions (callers own them).
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from faas_runtime.states import State


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column; use coscheduler.db.utcnow()")
    return value.astimezone(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores text without a zone, so values are
    converted to UTC on the way in and get their zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect) -> Optional[dt.datetime]:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[dt.datetime], dialect) -> Optional[dt.datetime]:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


# Named constraints, so that migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Function(Base):
    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("owner_uid", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    owner_uid: Mapped[int] = mapped_column(Integer)
    owner_gid: Mapped[int] = mapped_column(Integer)
    entrypoint: Mapped[str] = mapped_column(String(512))  # module:callable
    code_dir: Mapped[str] = mapped_column(String(4096))  # on a filesystem the nodes see
    cores: Mapped[int] = mapped_column(Integer, default=1)
    mem_mb: Mapped[int] = mapped_column(Integer, default=256)
    timeout_s: Mapped[float] = mapped_column(Float, default=60.0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Since migration 0002: the container (issue 5 runs it), updates, and deletion. A deleted
    # function keeps its row (its invocations' history points at it) under a tombstone name.
    image: Mapped[Optional[str]] = mapped_column(String(4096), nullable=True)
    runtime: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def version(self) -> str:
        """The function's last change: RUN carries it, and agents retire warm executors
        that imported an older version."""
        return (self.updated_at or self.created_at).isoformat()


class Slot(Base):
    """Capacity one batch job lends on one node (one lend record)."""

    __tablename__ = "slots"

    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # "<job_id>@<node>"
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    node: Mapped[str] = mapped_column(String(255), index=True)
    owner_uid: Mapped[int] = mapped_column(Integer)
    slurm_cpus: Mapped[list] = mapped_column(JSON)
    os_cpus: Mapped[list] = mapped_column(JSON)  # parallel to slurm_cpus
    mem_mb: Mapped[int] = mapped_column(Integer)
    end_time: Mapped[Optional[float]] = mapped_column(Float, nullable=True)  # unix s; None unknown
    until_min: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="ACTIVE", index=True)  # ACTIVE|REVOKED
    lent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)

    @property
    def lend_end(self) -> Optional[float]:
        return None if self.end_time is None else self.end_time - 60 * self.until_min

    def os_cpus_of(self, slurm_cpus: list[int]) -> list[int]:
        mapping = dict(zip(self.slurm_cpus, self.os_cpus))
        return sorted({mapping[c] for c in slurm_cpus})


class Invocation(Base):
    __tablename__ = "invocations"
    __table_args__ = (
        # Since migration 0002: the claim query walks (state, priority, owner, id); quotas
        # count (owner, state). They serve lookups by state, and by owner, too: migration
        # 0003 dropped the single-column indexes on those.
        Index("ix_invocations_claim", "state", "priority", "owner_uid", "id"),
        Index("ix_invocations_owner_state", "owner_uid", "state"),
        # Since migration 0007: the work on a node (HELLO, liveness, heartbeat checks).
        Index("ix_invocations_node_state", "node", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    function_id: Mapped[int] = mapped_column(ForeignKey("functions.id"), index=True)
    owner_uid: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text)  # JSON text
    state: Mapped[str] = mapped_column(String(16), default=State.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    slot_id: Mapped[Optional[str]] = mapped_column(String(300), nullable=True, index=True)
    node: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    slurm_cpus: Mapped[Optional[list]] = mapped_column(JSON(none_as_null=True), nullable=True)
    os_cpus: Mapped[Optional[list]] = mapped_column(JSON(none_as_null=True), nullable=True)
    mem_mb: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # JSON text
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    ran_on_cpus: Mapped[Optional[list]] = mapped_column(JSON(none_as_null=True), nullable=True)  # as the executor saw them
    # Since migration 0004: the function's traceback and the end of its stdout and stderr.
    traceback: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    output: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    # Since migration 0005: a binary payload and value (opaque bytes; docs/python.md). A row
    # with ``payload_bin`` has an empty ``payload``; a SUCCEEDED one with ``result_bin`` no
    # ``result``.
    payload_bin: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)
    result_bin: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dispatched_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime(), nullable=True)

    function: Mapped[Function] = relationship()
    events: Mapped[list["InvocationEvent"]] = relationship(
        order_by="InvocationEvent.id", cascade="all, delete-orphan"
    )


class InvocationEvent(Base):
    """One row per state change: the history ``submit-function status`` shows."""

    __tablename__ = "invocation_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    invocation_id: Mapped[int] = mapped_column(ForeignKey("invocations.id"), index=True)
    from_state: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[Optional[str]] = mapped_column(String(1024), nullable=True)


class StateTransition(Base):
    """The legal (from, to) pairs, filled from faas_runtime.states; read by the guard trigger."""

    __tablename__ = "state_transitions"

    from_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    to_state: Mapped[str] = mapped_column(String(16), primary_key=True)


class Leader(Base):
    """High availability (coscheduler/leader.py): one row, the epoch of the active
    co-scheduler. Each one that becomes active raises ``epoch``; every transaction of the
    active one reads it (FOR SHARE) and fails once it is not its own any more (fencing)."""

    __tablename__ = "coscheduler_leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    epoch: Mapped[int] = mapped_column(Integer)
    holder: Mapped[Optional[str]] = mapped_column(String(300), nullable=True)  # host:pid of the active one
    since: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime(), nullable=True)
