"""The models and the state guard, on SQLite and on a real PostgreSQL."""
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coscheduler import db as D
from coscheduler.states import IllegalTransition, State


def _function(s, **kw):
    fn = D.Function(name=kw.get("name", "f"), owner_uid=1000, owner_gid=1000, entrypoint="m:f",
                    code_dir="/tmp", cores=1, mem_mb=100, timeout_s=5, max_attempts=kw.get("max_attempts", 2))
    s.add(fn)
    s.flush()
    return fn


def test_lifecycle_is_recorded(database):
    with database.session() as s:
        inv = D.add_invocation(s, _function(s), "[1, 2]", 1000)
        for st in (State.DISPATCHED, State.RUNNING, State.SUCCEEDED):
            D.transition(s, inv, st)
        inv_id = inv.id
    with database.session() as s:
        inv = s.get(D.Invocation, inv_id)
        assert inv.state == "SUCCEEDED"
        assert [(e.from_state, e.to_state) for e in inv.events] == [
            (None, "QUEUED"), ("QUEUED", "DISPATCHED"), ("DISPATCHED", "RUNNING"), ("RUNNING", "SUCCEEDED")]
        assert all(e.at is not None for e in inv.events)


def test_transition_function_refuses_illegal(database):
    with database.session() as s:
        inv = D.add_invocation(s, _function(s), "null", 1000)
        with pytest.raises(IllegalTransition):
            D.transition(s, inv, State.SUCCEEDED)


def test_database_refuses_illegal_update(database):
    with database.session() as s:
        inv_id = D.add_invocation(s, _function(s), "null", 1000).id
    with pytest.raises(DBAPIError, match="illegal invocation state transition"):
        with database.session() as s:
            s.execute(text("UPDATE invocations SET state = 'SUCCEEDED' WHERE id = :i"), {"i": inv_id})
    with database.session() as s:
        assert s.get(D.Invocation, inv_id).state == "QUEUED"


def test_evict_requeues_until_attempts_run_out(database):
    with database.session() as s:
        inv = D.add_invocation(s, _function(s, max_attempts=2), "null", 1000)
        for attempt in (1, 2):
            inv.attempts = attempt
            inv.slot_id = "7@n1"
            D.transition(s, inv, State.DISPATCHED)
            D.evict(s, inv, "job ended")
        assert inv.state == "FAILED"
        assert "evicted 2 times" in inv.error
        assert inv.slot_id is None
        assert [e.to_state for e in inv.events].count("QUEUED") == 2


def test_queued_orders_by_priority_then_age(database):
    with database.session() as s:
        fn = _function(s)
        a = D.add_invocation(s, fn, "1", 1000)
        b = D.add_invocation(s, fn, "2", 1000, priority=3)
        assert [i.id for i in D.queued(s, 10)] == [b.id, a.id]
