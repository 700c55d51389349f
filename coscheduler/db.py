"""The co-scheduler's database: models, sessions, and the data functions the daemon uses.

SQLite (a file) is the embedded default, PostgreSQL the production choice; both through
SQLAlchemy 2. Data functions take a ``Session`` and never commit: the caller (one daemon
loop step, one request) owns the transaction (``Database.session()``).

Invocation state changes go through ``transition`` (one ORM object) or ``transition_many``
(the daemon's hot path: many rows with bulk statements) only; both ask
``coscheduler.states.check_transition`` and record every change with its time. The schema
repeats the rule with a trigger that refuses any other state change, so no other writer
can break the lifecycle either.
"""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    MetaData,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from .states import ALLOWED, ON_SLOT, IllegalTransition, State, check_transition


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use coscheduler.db.utcnow()")
        value = value.astimezone(dt.timezone.utc)
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
        # count (owner, state).
        Index("ix_invocations_claim", "state", "priority", "owner_uid", "id"),
        Index("ix_invocations_owner_state", "owner_uid", "state"),
    )

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


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection=None):
    """An Alembic config for the migrations shipped in this package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class Database:
    """An engine and a session factory; ``session()`` is one transaction."""

    def __init__(self, url: str, pool_size: int = 5):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Writers take turns; a busy timeout covers the CLI and a second daemon beside it.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL does not kill the daemon
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_schema(self) -> None:
        """Bring the schema to the newest migration (idempotent; Alembic keeps the revision).

        A database made by an older slurm-faas with ``create_all`` (tables, no revision) is
        stamped as the first revision, whose schema it has, and upgraded from there.
        """
        from alembic import command

        with self.engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            cfg = alembic_config(conn)
            if "invocations" in tables and "alembic_version" not in tables:
                command.stamp(cfg, "0001")
            command.upgrade(cfg, "head")

    def revision(self) -> Optional[str]:
        """The migration the database is at (None: no schema yet)."""
        from alembic.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction. ``write=True`` on SQLite takes the write lock at BEGIN
        (BEGIN IMMEDIATE): the serialised path of claims; on PostgreSQL row locks do that."""
        with self._sessions() as s:
            with s.begin():
                if write and self.dialect == "sqlite":
                    s.connection(execution_options={"sqlite_immediate": True})
                yield s

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_conn, _record) -> None:
    # Let SQLAlchemy emit BEGIN itself (pysqlite's own transaction handling defers BEGIN
    # and breaks SAVEPOINT and BEGIN IMMEDIATE).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (CLI, admin) never block the daemon
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")


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


def after_eviction(attempts: int, max_attempts: int, reason: str) -> tuple[State, Optional[str]]:
    """Where an evicted invocation goes: QUEUED while attempts remain (at-least-once), else
    FAILED with this error."""
    if attempts < max_attempts:
        return State.QUEUED, None
    return State.FAILED, f"evicted {attempts} times (max_attempts={max_attempts}): {reason}"


def evict(s: Session, inv: Invocation, reason: str) -> None:
    """An invocation lost its slot: requeue it while attempts remain (at-least-once)."""
    transition(s, inv, State.EVICTED, reason)
    release_from_slot(inv)
    then, error = after_eviction(inv.attempts, inv.function.max_attempts, reason)
    if then is State.QUEUED:
        transition(s, inv, State.QUEUED, "requeued after eviction")
    else:
        inv.error = error
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


# ---------------------------------------------------------------------------------------
# Claims, bulk submission, quotas.

ACTIVE_STATES = (State.QUEUED.value, State.DISPATCHED.value, State.RUNNING.value)


def claim_queued(s: Session, limit: int, per_user: int) -> list[Invocation]:
    """Claim queued invocations for this transaction: one statement.

    At most ``per_user`` of each (priority, user) in FIFO order, so that one user's flood
    cannot fill the window and hide another user's work from the fair share, and at most
    ``limit`` in all. On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``: a second
    co-scheduler (or a request cancelling one) never claims the same row, and nobody waits.
    SQLite has no row locks: callers open the session with ``write=True`` (BEGIN
    IMMEDIATE), which serialises claimers on the database's write lock.
    """
    _no_nested_loops(s)
    q = _claim(select(Invocation), limit, per_user).options(selectinload(Invocation.function))
    return list(s.scalars(q))


def _no_nested_loops(s: Session) -> None:
    """PostgreSQL's estimates of a queue that just filled (or emptied) are far off until
    autovacuum analyses it, and a nested loop then compares every queued row with every
    claimed one (60 ms instead of 2 ms for 5,000 queued): the claim's transaction plans
    its joins without nested loops (the rest of the tick reads and writes by key)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SET LOCAL enable_nestloop = off"))


def _claim(q, limit: int, per_user: int):
    rank = func.row_number().over(
        partition_by=(Invocation.priority, Invocation.owner_uid), order_by=Invocation.id).label("rank")
    window = select(Invocation.id, rank).where(Invocation.state == State.QUEUED.value).subquery()
    return (
        q.where(Invocation.id.in_(select(window.c.id).where(window.c.rank <= per_user)),
                Invocation.state == State.QUEUED.value)
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Invocation)
    )


def claim_queued_rows(s: Session, limit: int, per_user: int) -> list:
    """``claim_queued`` as plain rows (id, owner_uid, function_id, priority, attempts,
    created_at), without ORM objects or payloads: the daemon's scheduling tick, which
    reads payloads (``payloads``) of the few it places only."""
    _no_nested_loops(s)
    cols = select(Invocation.id, Invocation.owner_uid, Invocation.function_id, Invocation.priority,
                  Invocation.attempts, Invocation.created_at)
    return list(s.execute(_claim(cols, limit, per_user)))


def add_invocations(s: Session, fn: Function, payloads: list[str], owner_uid: int, priority: int = 0) -> list[int]:
    """Queue many invocations of one function with two bulk statements; returns their ids."""
    if not payloads:
        return []
    now = utcnow()
    rows = [{"function_id": fn.id, "owner_uid": owner_uid, "payload": p, "state": State.QUEUED.value,
             "priority": priority, "attempts": 0, "mem_mb": fn.mem_mb, "created_at": now, "updated_at": now}
            for p in payloads]
    ids = list(s.scalars(insert(Invocation).returning(Invocation.id, sort_by_parameter_order=True), rows))
    s.execute(insert(InvocationEvent), [
        {"invocation_id": i, "from_state": None, "to_state": State.QUEUED.value, "at": now, "reason": "submitted"}
        for i in ids])
    return ids


def user_counts(s: Session, uid: int) -> dict[str, int]:
    """How many invocations of ``uid`` are queued, dispatched, running."""
    q = (select(Invocation.state, func.count()).where(Invocation.owner_uid == uid, Invocation.state.in_(ACTIVE_STATES))
         .group_by(Invocation.state))
    return {st: n for st, n in s.execute(q)}


def on_slot_by_user(s: Session) -> dict[int, int]:
    q = (select(Invocation.owner_uid, func.count()).where(Invocation.state.in_([st.value for st in ON_SLOT]))
         .group_by(Invocation.owner_uid))
    return {uid: n for uid, n in s.execute(q)}


def function_named(s: Session, uid: int, name: str) -> Optional[Function]:
    return s.scalar(select(Function).where(Function.owner_uid == uid, Function.name == name,
                                           Function.deleted_at.is_(None)))


def cancel(s: Session, inv: Invocation, reason: str = "cancelled by its owner") -> bool:
    """Cancel a queued or running invocation; True when an agent must be told to stop it."""
    was_on_slot = State(inv.state) in ON_SLOT
    transition(s, inv, State.CANCELLED, reason)
    return was_on_slot


# ---------------------------------------------------------------------------------------
# Bulk state changes: the daemon's hot path (claims dispatched, agents' reports).

IN_CHUNK = 5000  # ids per IN (...) list: under SQLite's limit of bound parameters

# Columns an invocation no longer has once it left its slot (``release_from_slot``).
RELEASED: dict[str, Any] = {"slot_id": None, "node": None, "job_id": None, "slurm_cpus": None,
                            "os_cpus": None, "dispatched_at": None}


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]


@dataclass
class Change:
    """One state change of one invocation, for ``transition_many``; ``values``: the other
    columns the change sets (e.g. the result)."""

    invocation_id: int
    from_state: State
    to_state: State
    at: dt.datetime
    reason: Optional[str] = None
    values: dict[str, Any] = field(default_factory=dict)


class StaleState(RuntimeError):
    """A bulk change found a row no longer in the state it starts from (another writer
    changed it): the transaction must roll back."""


def transition_many(s: Session, changes: list[Change]) -> None:
    """Many state changes in a few statements, under the rule of ``transition``.

    Every change is asked of ``check_transition`` and recorded as an event with its own
    time (one executemany INSERT, in the order given). Rows are written with executemany
    UPDATEs ``WHERE id = :id AND state = :from``: a row in another state than the change
    starts from raises ``StaleState``, and the guard trigger checks each row. Changes of one
    invocation must follow on from each other in the order given; consecutive ones are
    written as one row change while that change is legal itself: DISPATCHED -> RUNNING ->
    SUCCEEDED is one write (DISPATCHED -> SUCCEEDED) and three events; RUNNING -> EVICTED
    -> QUEUED is two writes (RUNNING -> QUEUED is not legal). ORM objects of the session
    are flushed before and the touched ones expired after. No commit.
    """
    if not changes:
        return
    writes: dict[int, list[list[Change]]] = {}  # invocation -> its row writes, each a run of changes
    events = []
    for c in changes:
        check_transition(c.from_state, c.to_state)
        runs = writes.get(c.invocation_id)
        if runs is None:
            writes[c.invocation_id] = [[c]]
        else:
            last = runs[-1]
            if last[-1].to_state is not c.from_state:
                raise IllegalTransition(f"invocation {c.invocation_id}: a change from {c.from_state} follows "
                                        f"one to {last[-1].to_state}")
            if c.to_state in ALLOWED[last[0].from_state]:
                last.append(c)
            else:
                runs.append([c])
        events.append({"invocation_id": c.invocation_id, "from_state": c.from_state.value,
                       "to_state": c.to_state.value, "at": c.at, "reason": c.reason})
    s.flush()
    table = Invocation.__table__
    # The k-th write of every invocation goes in round k; in a round, one executemany per
    # (from state, columns set).
    rounds: list[dict[tuple, list[dict]]] = []
    for inv_id, runs in writes.items():
        for k, run in enumerate(runs):
            values: dict[str, Any] = {}
            for c in run:
                values.update(c.values)
            values["state"], values["updated_at"] = run[-1].to_state.value, run[-1].at
            if k == len(rounds):
                rounds.append({})
            params = {f"p_{col}": v for col, v in values.items()}
            params["p_id"] = inv_id
            rounds[k].setdefault((run[0].from_state.value, tuple(sorted(values))), []).append(params)
    for groups in rounds:
        for (from_state, cols), params in groups.items():
            stmt = (update(table)
                    .where(table.c.id == bindparam("p_id"), table.c.state == from_state)
                    .values({col: bindparam(f"p_{col}", type_=table.c[col].type) for col in cols}))
            done = s.execute(stmt, params).rowcount
            if done != len(params):
                raise StaleState(f"{len(params) - done} of {len(params)} invocations were no longer {from_state}")
    s.execute(insert(InvocationEvent.__table__), events)
    for obj in list(s.identity_map.values()):
        if isinstance(obj, Invocation) and obj.id in writes:
            s.expire(obj)


@dataclass
class ReportRow:
    """What the daemon needs to know of an invocation an agent reports on."""

    id: int
    state: State
    attempts: int
    slot_id: Optional[str]
    function_id: int
    max_attempts: int


def report_rows(s: Session, ids: Iterable[int]) -> dict[int, ReportRow]:
    """The invocations ``ids`` (those that exist), locked for this transaction on PostgreSQL."""
    out: dict[int, ReportRow] = {}
    for chunk in _chunks(ids):
        q = (select(Invocation.id, Invocation.state, Invocation.attempts, Invocation.slot_id,
                    Invocation.function_id, Function.max_attempts)
             .join(Function, Invocation.function_id == Function.id)
             .where(Invocation.id.in_(chunk))
             .with_for_update(of=Invocation))
        for r in s.execute(q):
            out[r.id] = ReportRow(r.id, State(r.state), r.attempts, r.slot_id, r.function_id, r.max_attempts)
    return out


def eviction_changes(row: ReportRow, reason: str, at: dt.datetime, unstarted: bool = False) -> list[Change]:
    """``evict`` as changes for ``transition_many``; updates ``row.state``. An invocation
    handed back ``unstarted`` (still DISPATCHED: it waited at the agent and never ran)
    gets its attempt back."""
    values = dict(RELEASED)
    if unstarted and row.state is State.DISPATCHED:
        row.attempts = values["attempts"] = row.attempts - 1
    then, error = after_eviction(row.attempts, row.max_attempts, reason)
    out = [Change(row.id, row.state, State.EVICTED, at, reason, values)]
    if then is State.QUEUED:
        out.append(Change(row.id, State.EVICTED, State.QUEUED, at, "requeued after eviction"))
    else:
        out.append(Change(row.id, State.EVICTED, State.FAILED, at, error, {"error": error}))
    row.state, row.slot_id = then, None
    return out


def slot_usage(s: Session, slot_ids: list[str]) -> list:
    """(slot_id, slurm_cpus, mem_mb, function_id, timeout_s) of each invocation on these slots."""
    out = []
    for chunk in _chunks(slot_ids):
        out.extend(s.execute(
            select(Invocation.slot_id, Invocation.slurm_cpus, Invocation.mem_mb, Invocation.function_id,
                   Function.timeout_s)
            .join(Function, Function.id == Invocation.function_id)
            .where(Invocation.state.in_([st.value for st in ON_SLOT]), Invocation.slot_id.in_(chunk))))
    return out


def payloads(s: Session, ids: Iterable[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in _chunks(ids):
        q = select(Invocation.id, Invocation.payload).where(Invocation.id.in_(chunk))
        out.update((inv_id, payload) for inv_id, payload in s.execute(q))
    return out


def functions_by_id(s: Session, ids: Iterable[int]) -> dict[int, Function]:
    return {fn.id: fn for fn in s.scalars(select(Function).where(Function.id.in_(list(ids))))}
