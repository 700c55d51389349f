"""The co-scheduler's database: models, sessions, and the data functions the daemon uses.

SQLite (a file) is the embedded default, PostgreSQL the production choice; both through
SQLAlchemy 2. Data functions take a ``Session`` and never commit: the caller (one daemon
loop step, one request) owns the transaction (``Database.session()``).

Invocation state changes go through ``transition`` (one ORM object) or ``transition_many``
(the daemon's hot path: many rows with bulk statements) only; both ask
``faas_runtime.states.check_transition`` and record every change with its time. The schema
repeats the rule with a trigger that refuses any other state change, so no other writer
can break the lifecycle either.
"""
from __future__ import annotations

import datetime as dt
import os
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
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
    and_,
    any_,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    insert,
    inspect,
    literal,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from faas_runtime.states import ALLOWED, ON_SLOT, IllegalTransition, State, check_transition


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
        # count (owner, state). They serve lookups by state, and by owner, too: migration
        # 0003 dropped the single-column indexes on those.
        Index("ix_invocations_claim", "state", "priority", "owner_uid", "id"),
        Index("ix_invocations_owner_state", "owner_uid", "state"),
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
        elif self.engine.dialect.driver == "psycopg":
            event.listen(self.engine, "connect", _psycopg_connect)
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


def make_private(url: str) -> None:
    """An SQLite queue's files (the database, its -wal and -shm) are the service's alone
    (0600), whoever created them; PostgreSQL keeps its own files private (docs/security.md
    says how to restrict who may connect)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = parsed.database + suffix
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not there (yet): created later under the daemon's umask 077
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _sqlite_connect(dbapi_conn, _record) -> None:
    # Let SQLAlchemy emit BEGIN itself (pysqlite's own transaction handling defers BEGIN
    # and breaks SAVEPOINT and BEGIN IMMEDIATE).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (CLI, admin) never block the daemon
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _psycopg_connect(dbapi_conn, _record) -> None:
    # Python lists (the arrays of the bulk statements) go in PostgreSQL's binary array
    # format: psycopg's default, text, quotes every element through a regular expression.
    from psycopg.types.array import ListBinaryDumper

    dbapi_conn.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")


def _is_postgresql(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


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
    return list(s.scalars(_claim(s.get_bind().dialect.name, False), _claim_params(limit, per_user)))


def claim_queued_rows(s: Session, limit: int, per_user: int) -> list:
    """``claim_queued`` as plain rows (id, owner_uid, function_id, priority, attempts,
    created_at), without ORM objects or payloads: the daemon's scheduling tick, which
    reads payloads (``payloads``) of the few it places only."""
    return list(s.execute(_claim(s.get_bind().dialect.name, True), _claim_params(limit, per_user)))


def _claim_params(limit: int, per_user: int) -> dict[str, int]:
    return {"claim_limit": limit, "claim_per_user": per_user}


@lru_cache(maxsize=8)
def _claim(dialect: str, rows: bool):
    """The claim statement (built once: it is the same every tick), for ORM objects or
    for ``claim_queued_rows``'s columns; bound parameters ``claim_limit`` and
    ``claim_per_user``."""
    if rows:
        q = select(Invocation.id, Invocation.owner_uid, Invocation.function_id, Invocation.priority,
                   Invocation.attempts, Invocation.created_at)
    else:
        q = select(Invocation).options(selectinload(Invocation.function))
    limit, per_user = bindparam("claim_limit", type_=Integer()), bindparam("claim_per_user", type_=Integer())
    if dialect == "postgresql":
        return _claim_postgresql(q, limit, per_user)
    # SQLite: number the queued rows of each (priority, user); the write lock taken at
    # BEGIN IMMEDIATE keeps other claimers out.
    rank = func.row_number().over(
        partition_by=(Invocation.priority, Invocation.owner_uid), order_by=Invocation.id).label("rank")
    window = select(Invocation.id, rank).where(Invocation.state == State.QUEUED.value).subquery()
    return (
        q.where(Invocation.id.in_(select(window.c.id).where(window.c.rank <= per_user)),
                Invocation.state == State.QUEUED.value)
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
    )


def _claim_postgresql(q, limit, per_user):
    """The claim on PostgreSQL: index probes whose number follows the rows claimed, not the
    length of the queue, in a plan that does not hang on the table's statistics (they
    are stale while a queue fills or drains faster than autovacuum analyses it).

    ``grp`` walks the distinct (priority, user) pairs of the queue along
    ``ix_invocations_claim`` (a loose index scan: one probe per pair); ``head`` takes the
    first ``per_user`` ids of each pair from the same index. The outer query locks the
    rows, joined by primary key. Its state test is a join condition (``state =
    head.state``) rather than a constant, so that no plan scans every queued row per
    claimed one, and PostgreSQL re-checks it before it locks a row that another
    transaction changed since the snapshot (dispatched elsewhere, cancelled).
    """
    queued = State.QUEUED.value
    table = Invocation.__table__
    g0, g1, w = table.alias("g0"), table.alias("g1"), table.alias("w")
    grp = (select(g0.c.priority, g0.c.owner_uid).where(g0.c.state == queued)
           .order_by(g0.c.priority, g0.c.owner_uid).limit(1).cte("grp", recursive=True))
    nxt = (select(g1.c.priority, g1.c.owner_uid)
           .where(g1.c.state == queued,
                  tuple_(g1.c.priority, g1.c.owner_uid) > tuple_(grp.c.priority, grp.c.owner_uid))
           .order_by(g1.c.priority, g1.c.owner_uid).limit(1).lateral("nxt"))
    grp = grp.union_all(select(nxt.c.priority, nxt.c.owner_uid).select_from(grp).join(nxt, true()))
    head = (select(w.c.id, w.c.state)
            .where(w.c.state == queued, w.c.priority == grp.c.priority, w.c.owner_uid == grp.c.owner_uid)
            .order_by(w.c.id).limit(per_user).lateral("head"))
    cand = select(head.c.id, head.c.state).select_from(grp).join(head, true()).subquery("cand")
    return (
        q.join(cand, and_(Invocation.id == cand.c.id, Invocation.state == cand.c.state))
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Invocation)
    )


def add_invocations(s: Session, fn: Function, payloads: list[str], owner_uid: int, priority: int = 0) -> list[int]:
    """Queue many invocations of one function with two bulk statements; returns their ids."""
    if not payloads:
        return []
    now = utcnow()
    if _is_postgresql(s):
        ids = sorted(s.scalars(_unnest_submit(), {
            "payloads": payloads, "function_id": fn.id, "owner_uid": owner_uid, "state": State.QUEUED.value,
            "priority": priority, "mem_mb": fn.mem_mb, "now": now}))
    else:
        rows = [{"function_id": fn.id, "owner_uid": owner_uid, "payload": p, "state": State.QUEUED.value,
                 "priority": priority, "attempts": 0, "mem_mb": fn.mem_mb, "created_at": now, "updated_at": now}
                for p in payloads]
        ids = list(s.scalars(insert(Invocation).returning(Invocation.id, sort_by_parameter_order=True), rows))
    _add_events(s, [{"invocation_id": i, "from_state": None, "to_state": State.QUEUED.value, "at": now,
                    "reason": "submitted"} for i in ids])
    return ids


@lru_cache(maxsize=1)
def _unnest_submit():
    """``add_invocations`` on PostgreSQL: ``INSERT ... SELECT FROM unnest(:payloads) WITH
    ORDINALITY ORDER BY ordinality RETURNING id``, one statement text for any number (the
    multi-row VALUES of executemany is a new text, parsed anew, for every batch size). The
    ids are drawn in the order of the payloads, so the sorted ids are theirs in order (as
    SQLAlchemy's own "insertmanyvalues" sorts them)."""
    table = Invocation.__table__
    u = (func.unnest(bindparam("payloads", type_=ARRAY(Text()))).table_valued("payload", with_ordinality="n")
         .render_derived(name="u"))
    consts = {col: bindparam(col, type_=table.c[col].type)
              for col in ("function_id", "owner_uid", "state", "priority", "mem_mb")}
    now = bindparam("now", type_=table.c.created_at.type)
    src = (select(consts["function_id"], consts["owner_uid"], u.c.payload, consts["state"], consts["priority"],
                  literal(0, Integer()), consts["mem_mb"], now, now)
           .select_from(u).order_by(u.c.n))
    return (insert(table)
            .from_select(["function_id", "owner_uid", "payload", "state", "priority", "attempts", "mem_mb",
                          "created_at", "updated_at"], src)
            .returning(table.c.id))


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
    time (in the order given). Rows are written ``WHERE id = :id AND state = :from``: a row
    in another state than the change starts from raises ``StaleState``, and the guard
    trigger checks each row. Changes of one invocation must follow on from each other in
    the order given; consecutive ones are written as one row change while that change is
    legal itself: DISPATCHED -> RUNNING -> SUCCEEDED is one write (DISPATCHED -> SUCCEEDED)
    and three events; RUNNING -> EVICTED -> QUEUED is two writes (RUNNING -> QUEUED is not
    legal). The k-th writes of all invocations are written together, one statement per
    (columns set): on PostgreSQL an ``UPDATE ... FROM unnest(arrays)`` and one
    ``INSERT ... SELECT FROM unnest`` for the events (a few round trips, statements that
    psycopg prepares once); on SQLite, in-process, executemany. ORM objects of the session
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
    # The k-th write of every invocation goes in round k; in a round, one statement per
    # set of columns written.
    rounds: list[dict[tuple[str, ...], list[_RowWrite]]] = []
    for inv_id, runs in writes.items():
        for k, run in enumerate(runs):
            values: dict[str, Any] = {}
            for c in run:
                values.update(c.values)
            values["state"], values["updated_at"] = run[-1].to_state.value, run[-1].at
            if k == len(rounds):
                rounds.append({})
            rounds[k].setdefault(tuple(sorted(values)), []).append(_RowWrite(inv_id, run[0].from_state.value, values))
    write = _write_rows_postgresql if _is_postgresql(s) else _write_rows
    for groups in rounds:
        for cols, rows in groups.items():
            done = write(s, cols, rows)
            if done != len(rows):
                raise StaleState(f"{len(rows) - done} of {len(rows)} invocations were no longer in the state "
                                 f"a change starts from ({', '.join(sorted({r.from_state for r in rows}))})")
    _add_events(s, events)
    for obj in list(s.identity_map.values()):
        if isinstance(obj, Invocation) and obj.id in writes:
            s.expire(obj)


@dataclass
class _RowWrite:
    """One row change of ``transition_many``: the state it starts from, the columns it sets."""

    id: int
    from_state: str
    values: dict[str, Any]


def _write_rows(s: Session, cols: tuple[str, ...], rows: list[_RowWrite]) -> int:
    """executemany ``UPDATE ... WHERE id = :id AND state = :from``; the rows written."""
    table = Invocation.__table__
    stmt = (update(table)
            .where(table.c.id == bindparam("p_id"), table.c.state == bindparam("p_from"))
            .values({col: bindparam(f"p_{col}", type_=table.c[col].type) for col in cols}))
    params = [{"p_id": r.id, "p_from": r.from_state, **{f"p_{col}": r.values[col] for col in cols}} for r in rows]
    return s.execute(stmt, params).rowcount


def _write_rows_postgresql(s: Session, cols: tuple[str, ...], rows: list[_RowWrite]) -> int:
    """One ``UPDATE invocations ... FROM unnest(:ids, :froms, :values...) AS v`` for the rows;
    the rows written."""
    stmt, json_cols = _unnest_update(cols)
    params: dict[str, Any] = {"a_id": [r.id for r in rows], "a_from_state": [r.from_state for r in rows]}
    for col in cols:
        values = [r.values[col] for r in rows]
        params[f"a_{col}"] = [_json_text(v, json_cols[col]) for v in values] if col in json_cols else values
    return s.execute(stmt, params).rowcount


def _json_text(value: Any, json_type: JSON) -> Optional[str]:
    return None if value is None and json_type.none_as_null else json.dumps(value)


@lru_cache(maxsize=64)
def _unnest_update(cols: tuple[str, ...]):
    """The statement of ``_write_rows_postgresql`` for these columns, and its JSON columns
    (they travel as text arrays and are cast back to JSON).

    The from-state comes from the arrays too, so that it is a join condition, and the
    only index that finds a row of ``v`` is the primary key: a constant state could be
    looked up by an index on state, which stale statistics (a queue that filled since the
    last ANALYZE) make look as cheap, and which reads every row in that state per row
    written (0.15 ms a row at 5,000 queued; psycopg's prepared statements keep such a
    generic plan for the connection's life)."""
    table = Invocation.__table__
    json_cols = {col: table.c[col].type for col in cols if isinstance(table.c[col].type, JSON)}
    spec = [column("id", Integer()), column("from_state", String())]
    spec += [column(col, Text() if col in json_cols else table.c[col].type) for col in cols]
    v = (func.unnest(*[bindparam(f"a_{c.name}", type_=ARRAY(c.type)) for c in spec])
         .table_valued(*spec).render_derived(name="v"))
    stmt = (update(table)
            .where(table.c.id == v.c.id, table.c.state == v.c.from_state)
            .values({col: cast(v.c[col], json_cols[col]) if col in json_cols else v.c[col] for col in cols}))
    return stmt, json_cols


def _add_events(s: Session, events: list[dict[str, Any]]) -> None:
    """Record state changes (dicts of invocation_id, from_state, to_state, at, reason), in
    the order given: one statement on PostgreSQL, executemany on SQLite."""
    if not events:
        return
    if not _is_postgresql(s):
        s.execute(insert(InvocationEvent.__table__), events)
        return
    s.execute(_unnest_events(), {f"e_{col}": [e[col] for e in events] for col in EVENT_COLUMNS})


EVENT_COLUMNS = ("invocation_id", "from_state", "to_state", "at", "reason")


@lru_cache(maxsize=1)
def _unnest_events():
    table = InvocationEvent.__table__
    spec = [column(col, table.c[col].type) for col in EVENT_COLUMNS]
    e = (func.unnest(*[bindparam(f"e_{c.name}", type_=ARRAY(c.type)) for c in spec])
         .table_valued(*spec).render_derived(name="e"))
    # unnest yields the rows in array order, and the ids are drawn in that order.
    return insert(table).from_select(list(EVENT_COLUMNS), select(*e.c))


def _id_filters(s: Session, col, ids: Iterable[int]) -> Iterator:
    """Conditions that together select ``col`` in ``ids``: on PostgreSQL one ``= ANY(:ids)``
    (one statement text whatever the count, which psycopg prepares once; and an index probe
    per id), on SQLite ``IN`` lists of at most ``IN_CHUNK``; none for no ids."""
    ids = list(ids)
    if not ids:
        return
    if _is_postgresql(s):
        yield col == any_(bindparam("ids", ids, type_=ARRAY(Integer())))
        return
    for chunk in _chunks(ids):
        yield col.in_(chunk)


@dataclass
class ReportRow:
    """What the daemon needs to know of an invocation an agent reports on."""

    id: int
    state: State
    attempts: int
    slot_id: Optional[str]
    function_id: int
    max_attempts: int
    node: Optional[str] = None


def report_rows(s: Session, ids: Iterable[int]) -> dict[int, ReportRow]:
    """The invocations ``ids`` (those that exist), locked for this transaction on PostgreSQL."""
    out: dict[int, ReportRow] = {}
    for where in _id_filters(s, Invocation.id, ids):
        q = (select(Invocation.id, Invocation.state, Invocation.attempts, Invocation.slot_id,
                    Invocation.function_id, Function.max_attempts, Invocation.node)
             .join(Function, Invocation.function_id == Function.id)
             .where(where)
             .with_for_update(of=Invocation))
        for r in s.execute(q):
            out[r.id] = ReportRow(r.id, State(r.state), r.attempts, r.slot_id, r.function_id, r.max_attempts, r.node)
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


def repoint(s: Session, inv_id: int, values: dict[str, Any], reason: str) -> None:
    """Move an invocation on a slot to another copy of it (same state, another node and
    attempt), with an event saying why: a duplicate whose later copy was stopped."""
    s.execute(update(Invocation).where(Invocation.id == inv_id).values(**values, updated_at=utcnow()))
    row = s.execute(select(Invocation.state).where(Invocation.id == inv_id)).scalar_one()
    s.add(InvocationEvent(invocation_id=inv_id, from_state=row, to_state=row, reason=reason[:1024]))


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
    for where in _id_filters(s, Invocation.id, ids):
        q = select(Invocation.id, Invocation.payload).where(where)
        out.update((inv_id, payload) for inv_id, payload in s.execute(q))
    return out


def functions_by_id(s: Session, ids: Iterable[int]) -> dict[int, Function]:
    return {fn.id: fn for where in _id_filters(s, Function.id, ids) for fn in s.scalars(select(Function).where(where))}
