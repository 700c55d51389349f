"""The queue's writes: the data functions that add, claim, cancel, evict and move invocations.

Invocation state changes go through ``transition`` (one ORM object) or ``transition_many``
(the daemon's hot path: many rows with bulk statements) only; both ask
``faas_runtime.states.check_transition`` and record every change with its time. The schema
repeats the rule with a trigger that refuses any other state change, so no other writer
can break the lifecycle either. Claims take their rows with one statement (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL). Every function takes the caller's ``Session`` and never
commits.

Never commits: each caller's step owns its transaction.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, NamedTuple, Optional

from sqlalchemy import Integer, and_, bindparam, insert, select, text, true, tuple_, update
from sqlalchemy.orm import Session, selectinload

from faas_runtime.states import ALLOWED, ON_SLOT, IllegalTransition, State, check_transition

from .bulk import (RowWrite, add_events, id_filters, is_postgresql, submit_sqlite, unnest_submit, unprepared,
                   unprepared_by_ids, write_rows, write_rows_postgresql)
from .models import Function, Invocation, InvocationEvent, utcnow


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


def cancel(s: Session, inv: Invocation, reason: str = "cancelled by its owner") -> bool:
    """Cancel a queued or running invocation; True when an agent must be told to stop it."""
    was_on_slot = State(inv.state) in ON_SLOT
    transition(s, inv, State.CANCELLED, reason)
    return was_on_slot


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
    reads payloads (``payloads``) of the few it places only. On PostgreSQL planned anew
    each time (``bulk.unprepared``: a plan kept from when the queue was small)."""
    dialect = s.get_bind().dialect
    if dialect.name != "postgresql":
        return list(s.execute(_claim(dialect.name, True), _claim_params(limit, per_user)))
    compiled = _claim_compiled(dialect)
    return [ClaimedRow(*r) for r in unprepared(s, compiled.string,
                                               compiled.construct_params(_claim_params(limit, per_user)))]


class ClaimedRow(NamedTuple):
    id: int
    owner_uid: int
    function_id: int
    priority: int
    attempts: int
    created_at: dt.datetime


@lru_cache(maxsize=2)
def _claim_compiled(dialect):
    return _claim("postgresql", True).compile(dialect=dialect)


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
    # SQLite: the write lock taken at BEGIN IMMEDIATE keeps other claimers out. The heads
    # are queued rows (of the same statement); a second state test here would have the
    # planner walk every queued row of the index instead of looking the heads up by id.
    return (
        q.where(Invocation.id.in_(_SQLITE_HEADS.bindparams(per_user)))
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
    )


# The ids of the first ``claim_per_user`` queued invocations of each (priority, user) on
# SQLite, in index probes whose number follows the pairs and the rows claimed, not the
# length of the queue (a window function over every queued row took 20 ms a pass at 5,000
# queued). ``grp`` walks the distinct pairs along ix_invocations_claim (a loose index
# scan: SQLite has no LATERAL, so a pair is carried by one of its rows' id); ``head`` finds
# each pair's last id to take (NULL: all of them); the outer join reads the ranges.
# CROSS JOIN and MATERIALIZED fix the order: heads first, then each range by the index.
_SQLITE_HEADS = text(f"""
WITH RECURSIVE grp(id) AS (
  SELECT id FROM (SELECT id FROM invocations WHERE state = '{State.QUEUED.value}'
                  ORDER BY priority, owner_uid LIMIT 1)
  UNION ALL
  SELECT COALESCE(
    (SELECT i.id FROM invocations i WHERE i.state = '{State.QUEUED.value}' AND i.priority = g.priority
       AND i.owner_uid > g.owner_uid ORDER BY i.owner_uid LIMIT 1),
    (SELECT i.id FROM invocations i WHERE i.state = '{State.QUEUED.value}' AND i.priority > g.priority
     ORDER BY i.priority, i.owner_uid LIMIT 1))
  FROM grp JOIN invocations g ON g.id = grp.id
),
head AS MATERIALIZED (
  SELECT g.priority AS priority, g.owner_uid AS owner_uid,
         (SELECT x.id FROM invocations x WHERE x.state = '{State.QUEUED.value}' AND x.priority = g.priority
            AND x.owner_uid = g.owner_uid ORDER BY x.id LIMIT 1 OFFSET :claim_per_user - 1) AS cutoff
  FROM grp JOIN invocations g ON g.id = grp.id
)
SELECT w.id FROM head CROSS JOIN invocations w
WHERE w.state = '{State.QUEUED.value}' AND w.priority = head.priority AND w.owner_uid = head.owner_uid
  AND w.id <= IFNULL(head.cutoff, 9223372036854775807) AND :claim_per_user > 0
""").columns(id=Integer())


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


def add_invocations(s: Session, fn: Function, payloads: list, owner_uid: int, priority: int = 0) -> list[int]:
    """Queue many invocations of one function with two bulk statements; returns their ids.
    A payload is JSON text, or bytes (a binary payload, stored in ``payload_bin``)."""
    if not payloads:
        return []
    now = utcnow()
    if any(isinstance(p, bytes) for p in payloads):
        rows = [{"function_id": fn.id, "owner_uid": owner_uid, "state": State.QUEUED.value, "priority": priority,
                 "attempts": 0, "mem_mb": fn.mem_mb, "created_at": now, "updated_at": now,
                 **({"payload": "", "payload_bin": p} if isinstance(p, bytes) else {"payload": p, "payload_bin": None})}
                for p in payloads]
        ids = list(s.scalars(insert(Invocation).returning(Invocation.id, sort_by_parameter_order=True), rows))
    elif is_postgresql(s):
        ids = sorted(s.scalars(unnest_submit(), {
            "payloads": payloads, "function_id": fn.id, "owner_uid": owner_uid, "state": State.QUEUED.value,
            "priority": priority, "mem_mb": fn.mem_mb, "now": now}))
    else:
        ids = submit_sqlite(s, payloads, function_id=fn.id, owner_uid=owner_uid, state=State.QUEUED.value,
                            priority=priority, attempts=0, mem_mb=fn.mem_mb, created_at=now, updated_at=now)
    add_events(s, [{"invocation_id": i, "from_state": None, "to_state": State.QUEUED.value, "at": now,
                    "reason": "submitted"} for i in ids])
    return ids


# Columns an invocation no longer has once it left its slot (``release_from_slot``).
RELEASED: dict[str, Any] = {"slot_id": None, "node": None, "job_id": None, "slurm_cpus": None,
                            "os_cpus": None, "dispatched_at": None}


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
    rounds: list[dict[tuple[str, ...], list[RowWrite]]] = []
    for inv_id, runs in writes.items():
        for k, run in enumerate(runs):
            values: dict[str, Any] = {}
            for c in run:
                values.update(c.values)
            values["state"], values["updated_at"] = run[-1].to_state.value, run[-1].at
            if k == len(rounds):
                rounds.append({})
            rounds[k].setdefault(tuple(sorted(values)), []).append(RowWrite(inv_id, run[0].from_state.value, values))
    write = write_rows_postgresql if is_postgresql(s) else write_rows
    for groups in rounds:
        for cols, rows in groups.items():
            done = write(s, cols, rows)
            if done != len(rows):
                raise StaleState(f"{len(rows) - done} of {len(rows)} invocations were no longer in the state "
                                 f"a change starts from ({', '.join(sorted({r.from_state for r in rows}))})")
    add_events(s, events)
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
    node: Optional[str] = None


def report_rows(s: Session, ids: Iterable[int]) -> dict[int, ReportRow]:
    """The invocations ``ids`` (those that exist). Not locked: the changes made from them
    (``transition_many``) are written only where a row is still in the state read, and
    raise ``StaleState`` otherwise. A lock (FOR UPDATE) wrote every row once more on
    PostgreSQL (a lock is a tuple write and WAL), for each report about it."""
    out: dict[int, ReportRow] = {}
    if is_postgresql(s):
        for r in unprepared_by_ids(s, _REPORT_ROWS_POSTGRESQL, ids):
            out[r[0]] = ReportRow(r[0], State(r[1]), *r[2:])
        return out
    for where in id_filters(s, Invocation.id, ids):
        q = (select(Invocation.id, Invocation.state, Invocation.attempts, Invocation.slot_id,
                    Invocation.function_id, Function.max_attempts, Invocation.node)
             .join(Function, Invocation.function_id == Function.id)
             .where(where))
        for r in s.execute(q):
            out[r.id] = ReportRow(r.id, State(r.state), r.attempts, r.slot_id, r.function_id, r.max_attempts, r.node)
    return out


_REPORT_ROWS_POSTGRESQL = ("SELECT i.id, i.state, i.attempts, i.slot_id, i.function_id, f.max_attempts, i.node "
                           "FROM invocations i JOIN functions f ON f.id = i.function_id WHERE i.id = ANY(%s)")


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
