"""The models and the state guard, on SQLite and on a real PostgreSQL."""
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from coscheduler import db as D
from coscheduler.db import bulk
from faas_runtime.states import IllegalTransition, State


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


# -- migrations ----------------------------------------------------------------------------


def test_migrated_schema_matches_the_models(database):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert database.revision() == database.head_revision()
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), D.Base.metadata)
    assert diff == []


def test_transition_rows_match_states_module(database):
    from faas_runtime.states import allowed_pairs

    with database.session() as s:
        rows = sorted(tuple(r) for r in s.execute(text("SELECT from_state, to_state FROM state_transitions")))
    assert rows == allowed_pairs()  # a change in states.py needs a migration that updates the table


def test_downgrade_to_base_and_upgrade_again(database):
    from alembic import command

    with database.session() as s:
        _function(s)
    with database.engine.begin() as conn:
        command.downgrade(D.alembic_config(conn), "0001")
    with database.engine.begin() as conn:
        command.downgrade(D.alembic_config(conn), "base")
    assert database.revision() is None
    database.create_schema()
    database.create_schema()  # idempotent
    test_database_refuses_illegal_update(database)  # the guard trigger came back with 0001


def test_legacy_create_all_database_is_stamped_and_upgraded(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # what the first release's create_schema() left behind
        conn.execute(text("CREATE TABLE functions (id INTEGER PRIMARY KEY, name VARCHAR(128) NOT NULL, "
                          "owner_uid INTEGER NOT NULL, owner_gid INTEGER NOT NULL, entrypoint VARCHAR(512) NOT NULL, "
                          "code_dir VARCHAR(4096) NOT NULL, cores INTEGER NOT NULL, mem_mb INTEGER NOT NULL, "
                          "timeout_s FLOAT NOT NULL, max_attempts INTEGER NOT NULL, created_at DATETIME NOT NULL, "
                          "UNIQUE (owner_uid, name))"))
        conn.execute(text("CREATE TABLE invocations (id INTEGER PRIMARY KEY, state VARCHAR(16), "
                          "priority INTEGER, owner_uid INTEGER, function_id INTEGER)"))
        conn.execute(text("INSERT INTO functions VALUES (1,'f',1000,1000,'m:f','/tmp',1,1,1.0,1,'2024-01-01')"))
    engine.dispose()
    db = D.Database(url)
    db.create_schema()
    assert db.revision() == db.head_revision()
    with db.session() as s:
        fn = s.get(D.Function, 1)
        assert fn.name == "f" and fn.image is None and fn.deleted_at is None
    db.dispose()


# -- claims and bulk submission --------------------------------------------------------


def test_bulk_add_records_history(database):
    with database.session() as s:
        fn = _function(s)
        ids = D.add_invocations(s, fn, [str(i) for i in range(500)], 1000, priority=2)
    assert len(ids) == 500 and ids == sorted(ids)
    with database.session() as s:
        inv = s.get(D.Invocation, ids[123])
        assert inv.payload == "123" and inv.priority == 2 and inv.state == "QUEUED"
        assert [e.to_state for e in inv.events] == ["QUEUED"]
        assert D.user_counts(s, 1000) == {"QUEUED": 500}


def test_claim_window_is_fair_per_user(database):
    with database.session() as s:
        fn = _function(s)
        flood = D.add_invocations(s, fn, ["0"] * 300, 1)
        few = D.add_invocations(s, fn, ["0"] * 3, 2)
    with database.session(write=True) as s:
        claimed = [i.id for i in D.claim_queued(s, limit=1000, per_user=50)]
    assert set(few) <= set(claimed)
    assert len(claimed) == 53 and set(claimed) - set(few) == set(flood[:50])


def test_concurrent_claims_never_overlap(database):
    """Two claimers at once: each row is claimed (and dispatched) exactly once."""
    import threading

    with database.session() as s:
        fn = _function(s)
        ids = D.add_invocations(s, fn, ["0"] * 200, 1000)
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    hold = threading.Barrier(2)

    def claimer(k: int) -> None:
        try:
            for _ in range(40):
                with database.session(write=True) as s:
                    batch = D.claim_queued(s, limit=7, per_user=1000)
                    if k == 0 and not got[0]:
                        hold.wait(timeout=10)  # both inside a claim transaction at once
                    for inv in batch:
                        inv.attempts += 1
                        D.transition(s, inv, State.DISPATCHED)
                    got[k].extend(i.id for i in batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def second() -> None:
        try:
            hold.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        claimer(1)

    threads = [threading.Thread(target=claimer, args=(0,)), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == ids
    with database.session() as s:
        assert D.count_by_state(s) == {"DISPATCHED": 200}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)  # row locks are PostgreSQL's
def test_skip_locked_on_postgresql(database):
    """While one transaction holds claimed rows, another claims the next ones without waiting."""
    with database.session() as s:
        fn = _function(s)
        ids = D.add_invocations(s, fn, ["0"] * 10, 1000)
    with database.session(write=True) as a:
        first = [i.id for i in D.claim_queued(a, limit=4, per_user=100)]
        with database.session(write=True) as b:
            second = [i.id for i in D.claim_queued(b, limit=4, per_user=100)]
    assert first == ids[:4] and second == ids[4:8]


def test_cancel_queued_and_running(database):
    with database.session() as s:
        fn = _function(s)
        a, b = (D.add_invocation(s, fn, "null", 1000) for _ in range(2))
        D.transition(s, b, State.DISPATCHED)
        D.transition(s, b, State.RUNNING)
        assert D.cancel(s, a) is False
        assert D.cancel(s, b) is True
        assert a.state == b.state == "CANCELLED"
        with pytest.raises(IllegalTransition):
            D.cancel(s, a)


def test_timestamps_are_utc_aware(database):
    with database.session() as s:
        inv_id = D.add_invocation(s, _function(s), "null", 1000).id
    with database.session() as s:
        inv = s.get(D.Invocation, inv_id)
        assert inv.created_at.utcoffset() is not None and inv.created_at.utcoffset().total_seconds() == 0
        assert all(e.at.tzinfo is not None for e in inv.events)


# -- bulk state changes (the daemon's hot path) ----------------------------------------


def _history(s, inv_id):
    return [(e.from_state, e.to_state, e.reason) for e in s.get(D.Invocation, inv_id).events]


def test_transition_many_folds_a_legal_chain_into_one_write(database):
    with database.session() as s:
        fn = _function(s)
        a, b = D.add_invocations(s, fn, ["1", "2"], 1000)
    at = D.utcnow()
    with database.session() as s:
        D.transition_many(s, [
            D.Change(a, State.QUEUED, State.DISPATCHED, at, "on 1@n", {"attempts": 1, "slot_id": "1@n"}),
            D.Change(b, State.QUEUED, State.DISPATCHED, at, "on 1@n", {"attempts": 1, "slot_id": "1@n"}),
        ])
    with database.session() as s:
        D.transition_many(s, [
            D.Change(a, State.DISPATCHED, State.RUNNING, at),
            D.Change(a, State.RUNNING, State.SUCCEEDED, at, None, {"result": "42", "ran_on_cpus": [3]}),
            D.Change(b, State.DISPATCHED, State.RUNNING, at),
        ])
    with database.session() as s:
        inv = s.get(D.Invocation, a)
        assert (inv.state, inv.result, inv.ran_on_cpus, inv.attempts, inv.slot_id) == ("SUCCEEDED", "42", [3], 1, "1@n")
        assert _history(s, a) == [(None, "QUEUED", "submitted"), ("QUEUED", "DISPATCHED", "on 1@n"),
                                  ("DISPATCHED", "RUNNING", None), ("RUNNING", "SUCCEEDED", None)]
        assert s.get(D.Invocation, b).state == "RUNNING"
        assert all(e.at.tzinfo is not None for e in s.get(D.Invocation, a).events)


def test_transition_many_writes_an_eviction_in_legal_steps(database):
    """RUNNING -> EVICTED -> QUEUED is two row writes: the guard refuses RUNNING -> QUEUED."""
    with database.session() as s:
        fn = _function(s, max_attempts=1)
        a, b = D.add_invocations(s, fn, ["1", "2"], 1000)
        for inv_id in (a, b):
            inv = s.get(D.Invocation, inv_id)
            inv.attempts, inv.slot_id, inv.node = 1, "1@n", "n"
            D.transition(s, inv, State.DISPATCHED)
    with database.session() as s:
        rows = D.report_rows(s, [a, b, 999999])
        assert set(rows) == {a, b} and rows[a].max_attempts == 1
        rows[a].attempts = 0  # as if attempts remained: requeued
        changes = D.eviction_changes(rows[a], "slot gone", D.utcnow()) + D.eviction_changes(
            rows[b], "slot gone", D.utcnow())
        D.transition_many(s, changes)
    with database.session() as s:
        ia, ib = s.get(D.Invocation, a), s.get(D.Invocation, b)
        assert (ia.state, ia.slot_id, ia.node) == ("QUEUED", None, None)
        assert ib.state == "FAILED" and "evicted 1 times" in ib.error
        assert [t for _, t, _ in _history(s, a)] == ["QUEUED", "DISPATCHED", "EVICTED", "QUEUED"]
        assert [t for _, t, _ in _history(s, b)] == ["QUEUED", "DISPATCHED", "EVICTED", "FAILED"]


def test_transition_many_refuses_illegal_and_stale_changes(database):
    with database.session() as s:
        (a,) = D.add_invocations(s, _function(s), ["1"], 1000)
    with pytest.raises(IllegalTransition):
        with database.session() as s:
            D.transition_many(s, [D.Change(a, State.QUEUED, State.SUCCEEDED, D.utcnow())])
    with pytest.raises(IllegalTransition, match="follows"):
        with database.session() as s:
            D.transition_many(s, [D.Change(a, State.QUEUED, State.DISPATCHED, D.utcnow()),
                                  D.Change(a, State.RUNNING, State.SUCCEEDED, D.utcnow())])
    with pytest.raises(D.StaleState):  # the row is QUEUED, not DISPATCHED
        with database.session() as s:
            D.transition_many(s, [D.Change(a, State.DISPATCHED, State.RUNNING, D.utcnow())])
    with database.session() as s:
        assert s.get(D.Invocation, a).state == "QUEUED" and len(_history(s, a)) == 1


def test_claim_rows_match_claim_objects(database):
    with database.session() as s:
        fn = _function(s)
        D.add_invocations(s, fn, ["0"] * 30, 1)
        few = D.add_invocations(s, fn, ["0"] * 3, 2, priority=1)
    with database.session(write=True) as s:
        rows = D.claim_queued_rows(s, limit=100, per_user=10)
    with database.session(write=True) as s:
        objs = D.claim_queued(s, limit=100, per_user=10)
    assert [r.id for r in rows] == [o.id for o in objs]
    assert [r.id for r in rows][:3] == few and len(rows) == 13


# -- the bulk statements themselves (one statement per step on PostgreSQL) -------------------


def test_claim_takes_the_head_of_each_priority_and_user(database):
    """Users and priorities interleaved: the claim is the first ``per_user`` of each
    (priority, user), highest priority first, then oldest, cut at ``limit``."""
    with database.session() as s:
        fn = _function(s)
        submitted = []  # (priority, uid, id)
        for k in range(12):
            uid, priority = 10 + k % 3, (0, 2, 5)[k % 4 % 3]
            submitted += [(priority, uid, i) for i in D.add_invocations(s, fn, ["0"] * 7, uid, priority)]
    for limit, per_user in ((1000, 5), (17, 4), (1000, 1000), (3, 1)):
        heads: dict[tuple[int, int], list[int]] = {}
        for priority, uid, i in sorted(submitted, key=lambda t: t[2]):
            heads.setdefault((priority, uid), []).append(i)
        expected = sorted(((p, i) for (p, _), ids in heads.items() for i in ids[:per_user]),
                          key=lambda t: (-t[0], t[1]))[:limit]
        with database.session(write=True) as s:
            rows = D.claim_queued_rows(s, limit=limit, per_user=per_user)
            objs = D.claim_queued(s, limit=limit, per_user=per_user)
        assert [(r.priority, r.id) for r in rows] == expected
        assert [o.id for o in objs] == [i for _, i in expected]


def test_claim_skips_invocations_no_longer_queued(database):
    with database.session() as s:
        fn = _function(s)
        ids = D.add_invocations(s, fn, ["0"] * 6, 1000)
    with database.session() as s:
        D.transition_many(s, [D.Change(i, State.QUEUED, State.DISPATCHED, D.utcnow()) for i in ids[:2]]
                          + [D.Change(ids[3], State.QUEUED, State.CANCELLED, D.utcnow())])
    with database.session(write=True) as s:
        assert [r.id for r in D.claim_queued_rows(s, limit=10, per_user=2)] == [ids[2], ids[4]]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sqlite_claim_work_follows_the_rows_claimed_not_the_queue(database):
    """The claim's work (SQLite virtual-machine steps, counted by a progress handler: not
    time) hardly changes when the queue behind the heads grows tenfold."""
    with database.session() as s:
        fn = _function(s)
        for uid in (1, 2):
            D.add_invocations(s, fn, ["0"] * 500, uid)

    def steps() -> int:
        count = [0]
        with database.session(write=True) as s:
            raw = s.connection().connection.dbapi_connection
            raw.set_progress_handler(lambda: count.__setitem__(0, count[0] + 1) or 0, 100)
            try:
                assert len(D.claim_queued_rows(s, limit=1000, per_user=20)) == 40
            finally:
                raw.set_progress_handler(None, 0)
        return count[0]

    small = steps()
    with database.session() as s:
        for uid in (1, 2):
            D.add_invocations(s, s.get(D.Function, fn.id), ["0"] * 4500, uid)
    assert steps() < 1.5 * small


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_claim_with_statistics_of_another_queue(database):
    """Statistics taken while the queue was empty, then while every row was done: the
    claim still returns the head of the queue (its plan does not need them to be right)."""
    with database.session() as s:
        fn = _function(s)
    with database.engine.begin() as conn:
        conn.execute(text("ANALYZE invocations"))
    with database.session() as s:
        first = D.add_invocations(s, fn, ["0"] * 300, 1)
    with database.session(write=True) as s:
        assert [r.id for r in D.claim_queued_rows(s, limit=50, per_user=20)] == first[:20]
        D.transition_many(s, [D.Change(i, State.QUEUED, State.CANCELLED, D.utcnow()) for i in first])
    with database.engine.begin() as conn:
        conn.execute(text("ANALYZE invocations"))
    with database.session() as s:
        later = D.add_invocations(s, fn, ["0"] * 30, 2) + D.add_invocations(s, fn, ["0"] * 30, 3, priority=1)
    with database.session(write=True) as s:
        assert [r.id for r in D.claim_queued_rows(s, limit=50, per_user=20)] == later[30:50] + later[:20]


def test_bulk_transitions_of_many_rows_keep_every_value(database):
    """More invocations than one IN list holds, through dispatch (JSON lists, times) and
    the agents' reports (results, nulls), as the daemon writes them."""
    n = D.IN_CHUNK + 500
    with database.session() as s:
        fn = _function(s)
        ids = D.add_invocations(s, fn, [f"[{i}]" for i in range(n)], 1000)
    assert ids == sorted(ids) and len(ids) == n
    at = D.utcnow()
    with database.session(write=True) as s:
        claimed = D.claim_queued_rows(s, limit=n, per_user=n)
        assert [r.id for r in claimed] == ids
        pay = D.payloads(s, ids)
        assert all(pay[i] == f"[{k}]" for k, i in enumerate(ids))
        D.transition_many(s, [D.Change(r.id, State.QUEUED, State.DISPATCHED, at, f"on 1@n cores [{r.id % 4}]", {
            "attempts": r.attempts + 1, "slot_id": "1@n", "node": "n", "job_id": 1, "slurm_cpus": [r.id % 4],
            "os_cpus": [r.id % 4 + 8], "mem_mb": 5, "dispatched_at": at}) for r in claimed])
    with database.session(write=True) as s:
        rows = D.report_rows(s, ids)
        assert len(rows) == n and {r.state for r in rows.values()} == {State.DISPATCHED}
        changes = []
        for k, i in enumerate(ids):
            changes.append(D.Change(i, State.DISPATCHED, State.RUNNING, at))
            if k % 2:
                changes.append(D.Change(i, State.RUNNING, State.SUCCEEDED, at, None,
                                        {"result": str(k), "ran_on_cpus": [8]}))
            else:
                changes.append(D.Change(i, State.RUNNING, State.FAILED, at, "boom", {"error": "boom",
                                                                                      "ran_on_cpus": None}))
        D.transition_many(s, changes)
    with database.session() as s:
        assert D.count_by_state(s) == {"SUCCEEDED": n // 2, "FAILED": n - n // 2}
        a, b = s.get(D.Invocation, ids[0]), s.get(D.Invocation, ids[1])
        assert (a.state, a.error, a.ran_on_cpus, a.result) == ("FAILED", "boom", None, None)
        assert (b.state, b.result, b.ran_on_cpus) == ("SUCCEEDED", "1", [8])
        assert (b.slurm_cpus, b.os_cpus, b.node, b.job_id, b.mem_mb, b.attempts) == (
            [ids[1] % 4], [ids[1] % 4 + 8], "n", 1, 5, 1)
        assert b.dispatched_at == at and b.updated_at == at and b.dispatched_at.tzinfo is not None
        assert _history(s, ids[1]) == [(None, "QUEUED", "submitted"),
                                       ("QUEUED", "DISPATCHED", f"on 1@n cores [{ids[1] % 4}]"),
                                       ("DISPATCHED", "RUNNING", None), ("RUNNING", "SUCCEEDED", None)]
        assert s.scalar(select(func.count()).select_from(D.InvocationEvent)) == 4 * n


def test_bulk_events_keep_the_order_given(database):
    with database.session() as s:
        a, b, c = D.add_invocations(s, _function(s), ["1", "2", "3"], 1000)
    at = D.utcnow()
    order = [(b, State.QUEUED, State.DISPATCHED), (a, State.QUEUED, State.CANCELLED),
             (b, State.DISPATCHED, State.RUNNING), (c, State.QUEUED, State.DISPATCHED),
             (b, State.RUNNING, State.SUCCEEDED), (c, State.DISPATCHED, State.EVICTED),
             (c, State.EVICTED, State.QUEUED)]
    with database.session() as s:
        first = s.scalar(select(func.max(D.InvocationEvent.id)))
        D.transition_many(s, [D.Change(i, f, t, at) for i, f, t in order])
    with database.session() as s:
        events = s.execute(select(D.InvocationEvent.invocation_id, D.InvocationEvent.from_state,
                                  D.InvocationEvent.to_state).where(D.InvocationEvent.id > first)
                           .order_by(D.InvocationEvent.id)).all()
        assert events == [(i, f.value, t.value) for i, f, t in order]
        assert [s.get(D.Invocation, i).state for i in (a, b, c)] == ["CANCELLED", "SUCCEEDED", "QUEUED"]


def test_the_database_guards_the_bulk_statements_too(database):
    """The statements of transition_many, given a change that states.py refuses, are
    refused by the guard trigger as well (no writer gets round it)."""
    with database.session() as s:
        (a,) = D.add_invocations(s, _function(s), ["1"], 1000)
    write = bulk.write_rows_postgresql if database.dialect == "postgresql" else bulk.write_rows
    with pytest.raises(DBAPIError, match="illegal invocation state transition"):
        with database.session() as s:
            write(s, ("state", "updated_at"), [bulk.RowWrite(a, "QUEUED", {"state": "SUCCEEDED",
                                                                            "updated_at": D.utcnow()})])
    with database.session() as s:
        assert s.get(D.Invocation, a).state == "QUEUED"


def test_lookups_by_no_ids(database):
    with database.session(write=True) as s:
        assert D.report_rows(s, []) == {} and D.payloads(s, []) == {} and D.functions_by_id(s, []) == {}
        assert D.claim_queued_rows(s, limit=10, per_user=10) == []
        D.transition_many(s, [])
        assert D.add_invocations(s, _function(s), [], 1000) == []
