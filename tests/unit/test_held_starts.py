"""STARTED held for a turn (coscheduler/started.py) and the SQLite bulk writes that go
straight to the driver (coscheduler/db/bulk.py): the states, events and stored values are
those the ORM path gives. On SQLite and PostgreSQL (the ``database`` fixture)."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from coscheduler import db as D
from coscheduler.config import Config
from coscheduler.daemon import Coscheduler
from coscheduler.db import bulk
from faas_runtime import protocol as P
from faas_runtime.states import State

from .daemon_harness import UID, StubSlurm, _port


@pytest.fixture
def room(database):
    """The agents' room of a co-scheduler whose loop does not run; the test calls its steps."""
    from coscheduler.hub import AgentSession

    d = Coscheduler(Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}"), database, StubSlurm(),
                    verify=lambda cred, digest: int(cred))
    d.hub.add_session(AgentSession("n1", b"agent:n1", b"k" * 32, time.monotonic()))
    yield d.agent_room
    d.sock.close()
    d.ctx.term()


def _dispatched(database, n):
    with database.session() as s:
        fn = D.Function(name="held", owner_uid=UID, owner_gid=UID, entrypoint="m:f", code_dir="/tmp", cores=1,
                        mem_mb=1, timeout_s=5, max_attempts=3)
        s.add(fn)
        s.flush()
        ids = D.add_invocations(s, fn, ["null"] * n, UID)
        at = D.utcnow()
        D.transition_many(s, [D.Change(i, State.QUEUED, State.DISPATCHED, at, None, {
            "attempts": 1, "slot_id": "1@n1", "node": "n1", "job_id": 1, "slurm_cpus": [0], "os_cpus": [0],
            "dispatched_at": at}) for i in ids])
    return ids


def _msg(kind, inv_id, **fields):
    return (b"agent:n1", {"v": P.VERSION, "type": kind, "node": "n1", "invocation_id": inv_id, "attempt": 1,
                          **fields})


def _history(database, inv_id):
    with database.session() as s:
        inv = s.get(D.Invocation, inv_id)
        return inv.state, [(e.to_state, e.at) for e in inv.events]


def test_a_started_is_written_with_the_result_of_the_next_turn(room, database):
    (a,) = _dispatched(database, 1)
    room.batch([_msg(P.STARTED, a)])
    assert _history(database, a)[0] == "DISPATCHED"  # held
    room.step_liveness()  # the turn ends: still held, a report may follow in the next
    room.batch([_msg(P.RESULT, a, outcome="ok", value_json="1", cpus=[0])])
    state, events = _history(database, a)
    assert state == "SUCCEEDED" and [e[0] for e in events] == ["QUEUED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    assert events[2][1] < events[3][1]  # RUNNING at the time the STARTED arrived
    assert len(room.held_starts) == 0


def test_a_started_alone_is_written_at_the_end_of_the_next_turn(room, database):
    (a,) = _dispatched(database, 1)
    room.batch([_msg(P.STARTED, a)])
    room.step_liveness()
    assert _history(database, a)[0] == "DISPATCHED"
    room.step_liveness()
    state, events = _history(database, a)
    assert state == "RUNNING" and [e[0] for e in events] == ["QUEUED", "DISPATCHED", "RUNNING"]


def test_a_held_started_of_work_that_moved_on_is_dropped(room, database):
    cancelled, evicted = _dispatched(database, 2)
    room.batch([_msg(P.STARTED, cancelled), _msg(P.STARTED, evicted)])
    with database.session() as s:
        D.cancel(s, s.get(D.Invocation, cancelled), "test")
    room.batch([_msg(P.EVICTED, evicted, reason="oom")])  # takes its STARTED: RUNNING -> EVICTED
    for _ in range(2):
        room.step_liveness()
    assert _history(database, cancelled)[0] == "CANCELLED"
    state, events = _history(database, evicted)
    assert state == "QUEUED" and [e[0] for e in events] == ["QUEUED", "DISPATCHED", "RUNNING", "EVICTED", "QUEUED"]
    assert len(room.held_starts) == 0


def test_sqlite_time_is_what_sqlalchemy_stores():
    from sqlalchemy.dialects import sqlite

    proc = D.UTCDateTime()._cached_bind_processor(sqlite.dialect())  # what a compiled statement uses
    for value in (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                  dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.timezone(dt.timedelta(hours=2))), D.utcnow()):
        assert bulk.sqlite_time(value) == proc(value)
    with pytest.raises(ValueError):
        bulk.sqlite_time(dt.datetime(2026, 1, 2))


def test_bulk_writes_store_what_the_orm_reads(database):
    (a, b) = _dispatched(database, 2)
    at = D.utcnow()
    with database.session() as s:
        D.transition_many(s, [
            D.Change(a, State.DISPATCHED, State.SUCCEEDED, at, None,
                     {"result": '{"x": 1}', "ran_on_cpus": [3, 4], "output": None, "result_bin": None}),
            D.Change(b, State.DISPATCHED, State.EVICTED, at, "gone", dict(D.RELEASED)),
            D.Change(b, State.EVICTED, State.QUEUED, at)])
    with database.session() as s:
        ia, ib = s.get(D.Invocation, a), s.get(D.Invocation, b)
        assert (ia.state, ia.result, ia.ran_on_cpus, ia.output, ia.updated_at) == ("SUCCEEDED", '{"x": 1}', [3, 4],
                                                                                  None, at)
        assert (ib.state, ib.slurm_cpus, ib.node, ib.dispatched_at) == ("QUEUED", None, None, None)
        assert ia.events[-1].at == at and ib.events[-1].reason is None and ib.events[-2].reason == "gone"
        # A JSON null stays SQL NULL where the column says so (none_as_null): queries on IS NULL work.
        assert s.scalar(D.select(D.func.count()).where(D.Invocation.id == b, D.Invocation.slurm_cpus.is_(None))) == 1
        # Times compare in order with those SQLAlchemy writes.
        assert s.scalar(D.select(D.func.count()).where(D.Invocation.id == a, D.Invocation.updated_at >= at)) == 1


def test_a_large_batch_keeps_its_ids_in_payload_order(database):
    with database.session() as s:
        fn = D.Function(name="many", owner_uid=UID, owner_gid=UID, entrypoint="m:f", code_dir="/tmp", cores=1,
                        mem_mb=1, timeout_s=5, max_attempts=3)
        s.add(fn)
        s.flush()
        payloads = [str(i) for i in range(bulk.SUBMIT_CHUNK * 2 + 7)]
        ids = D.add_invocations(s, fn, payloads, UID, priority=2)
    assert ids == sorted(ids) and len(set(ids)) == len(payloads)
    with database.session() as s:
        got = dict(s.execute(D.select(D.Invocation.id, D.Invocation.payload).where(D.Invocation.id.in_(ids))).all())
        inv = s.get(D.Invocation, ids[-1])
        assert [got[i] for i in ids] == payloads
        assert (inv.state, inv.priority, inv.attempts, inv.mem_mb, inv.owner_uid) == ("QUEUED", 2, 0, 1, UID)
        assert inv.created_at.tzinfo is not None and [e.to_state for e in inv.events] == ["QUEUED"]
