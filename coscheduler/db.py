"""The co-scheduler's database: models, sessions, and the data functions the daemon uses.

SQLite (a file) is the embedded default, PostgreSQL the production choice; both through
SQLAlchemy 2. Data functions take a ``Session`` and never commit: the caller (one daemon
loop step, one request) owns the transaction (``Database.session()``).

Invocation state changes go through ``transition`` only. The schema repeats the rule of
``coscheduler.states`` with a trigger that refuses any other state change, so no other
writer can break the lifecycle either.
"""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .states import ON_SLOT, State, allowed_pairs, check_transition


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(DateTime):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    def __init__(self) -> None:
        super().__init__(timezone=True)


class Base(DeclarativeBase):
    pass


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

    id: Mapped[int] = mapped_column(primary_key=True)
    function_id: Mapped[int] = mapped_column(ForeignKey("functions.id"), index=True)
    owner_uid: Mapped[int] = mapped_column(Integer, index=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON text
    state: Mapped[str] = mapped_column(String(16), default=State.QUEUED.value, index=True)
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
    """The legal (from, to) pairs, filled from coscheduler.states; read by the guard trigger."""

    __tablename__ = "state_transitions"

    from_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    to_state: Mapped[str] = mapped_column(String(16), primary_key=True)


_GUARD_SQLITE = """
CREATE TRIGGER IF NOT EXISTS invocation_state_guard
BEFORE UPDATE OF state ON invocations
WHEN OLD.state != NEW.state AND NOT EXISTS (
    SELECT 1 FROM state_transitions WHERE from_state = OLD.state AND to_state = NEW.state)
BEGIN
    SELECT RAISE(ABORT, 'illegal invocation state transition');
END
"""

_GUARD_POSTGRES = [
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
    "DROP TRIGGER IF EXISTS invocation_state_guard ON invocations",
    """
CREATE TRIGGER invocation_state_guard BEFORE UPDATE OF state ON invocations
FOR EACH ROW EXECUTE FUNCTION invocation_state_guard()
""",
]


class Database:
    """An engine and a session factory; ``session()`` is one transaction."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # The daemon is the only writer; a busy timeout covers the CLI reading beside it.
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create missing tables, the transition table and the guard (idempotent)."""
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            known = {tuple(r) for r in conn.execute(select(StateTransition.from_state, StateTransition.to_state))}
            for pair in allowed_pairs():
                if pair not in known:
                    conn.execute(StateTransition.__table__.insert().values(from_state=pair[0], to_state=pair[1]))
            if self.engine.dialect.name == "sqlite":
                conn.execute(text(_GUARD_SQLITE))
            elif self.engine.dialect.name == "postgresql":
                for stmt in _GUARD_POSTGRES:
                    conn.execute(text(stmt))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            with s.begin():
                yield s

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (CLI, admin) never block the daemon
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# ---------------------------------------------------------------------------------------
# Data functions (no commits).


def transition(s: Session, inv: Invocation, new: State, reason: Optional[str] = None) -> None:
    """The one place an invocation changes state; records the change with its time."""
    current = State(inv.state)
    check_transition(current, new)
    now = utcnow()
    inv.state = new.value
    inv.updated_at = now
    s.add(InvocationEvent(invocation_id=inv.id, from_state=current.value, to_state=new.value, at=now, reason=reason))
    # Flush each change on its own: the database guard checks every step, not only the last.
    s.flush()


def add_invocation(s: Session, fn: Function, payload_json: str, owner_uid: int, priority: int = 0) -> Invocation:
    inv = Invocation(
        function_id=fn.id, owner_uid=owner_uid, payload=payload_json, state=State.QUEUED.value,
        priority=priority, mem_mb=fn.mem_mb,
    )
    s.add(inv)
    s.flush()
    s.add(InvocationEvent(invocation_id=inv.id, from_state=None, to_state=State.QUEUED.value, at=inv.created_at, reason="submitted"))
    return inv


def release_from_slot(inv: Invocation) -> None:
    """Forget where an invocation ran, e.g. before it is queued again."""
    inv.slot_id = inv.node = inv.job_id = None
    inv.slurm_cpus = inv.os_cpus = None
    inv.dispatched_at = None


def evict(s: Session, inv: Invocation, reason: str) -> None:
    """An invocation lost its slot: requeue it while attempts remain (at-least-once)."""
    transition(s, inv, State.EVICTED, reason)
    release_from_slot(inv)
    if inv.attempts < inv.function.max_attempts:
        transition(s, inv, State.QUEUED, "requeued after eviction")
    else:
        inv.error = f"evicted {inv.attempts} times (max_attempts={inv.function.max_attempts}): {reason}"
        transition(s, inv, State.FAILED, inv.error)


def on_slot(s: Session, slot_ids: Optional[list[str]] = None) -> list[Invocation]:
    q = select(Invocation).where(Invocation.state.in_([st.value for st in ON_SLOT]))
    if slot_ids is not None:
        q = q.where(Invocation.slot_id.in_(slot_ids))
    return list(s.scalars(q))


def active_slots(s: Session) -> list[Slot]:
    return list(s.scalars(select(Slot).where(Slot.state == "ACTIVE").order_by(Slot.id)))


def queued(s: Session, limit: int) -> list[Invocation]:
    q = (
        select(Invocation)
        .where(Invocation.state == State.QUEUED.value)
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
    )
    return list(s.scalars(q))


def count_by_state(s: Session) -> dict[str, int]:
    return {st: n for st, n in s.execute(select(Invocation.state, func.count()).group_by(Invocation.state))}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
