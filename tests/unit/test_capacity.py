"""Placement's memory of the lent capacity (coscheduler/capacity.py): a pass offers the
best-fitting slots for what it claimed, not every slot; it follows the changes the rooms
mark and, for those nobody marked, the rolling reread; and placement through it never
gives an invocation cores or memory another holds."""
from __future__ import annotations

import random
import time
from types import SimpleNamespace

from coscheduler import capacity as C
from coscheduler import db as D
from coscheduler.config import Config
from coscheduler.hub import Hub
from coscheduler.scheduler import PendingInvocation, SlotView, place
from faas_runtime.states import State

from .daemon_harness import UID


def _slot(node: str, job: int, cores: int, mem_mb: int = 64_000, end: float | None = None) -> D.Slot:
    return D.Slot(id=f"{job}@{node}", job_id=job, node=node, owner_uid=0, slurm_cpus=list(range(cores)),
                  os_cpus=list(range(cores)), mem_mb=mem_mb, end_time=end, until_min=0, state="ACTIVE",
                  lent_at=D.utcnow())


def _memory(slots: dict[D.Slot, list]) -> C.Capacity:
    """A Capacity holding ``slots``, each with its work: [(cpus, mem_mb), ...]."""
    hub = SimpleNamespace(stats=SimpleNamespace(run_time={}, warm_on=lambda slot_id, mono: frozenset()))
    cap = C.Capacity(hub)
    by_node: dict[str, tuple[list, list]] = {}
    for sl, work in slots.items():
        held, rows = by_node.setdefault(sl.node, ([], []))
        held.append(sl)
        rows.extend((sl.id, cpus, mem, 1, 10.0, UID) for cpus, mem in work)
    for node, (held, rows) in by_node.items():
        cap._set_node(node, held, rows)
    return cap


def _ask(n: int, cores: int = 1, mem_mb: int = 100, timeout_s: float = 10.0, user: int = UID):
    return [PendingInvocation(i, user, "1", cores, mem_mb, timeout_s, submitted_at=float(i)) for i in range(1, n + 1)]


def test_a_pass_offers_the_fewest_slots_that_fit_best():
    nearly_full = _slot("n0", 1, 8)
    slots = {nearly_full: [([c], 100) for c in range(6)]}  # 2 cores free
    slots.update({_slot(f"n{i}", i + 1, 8): [] for i in range(1, 200)})
    cap = _memory(slots)
    views = cap.views(_ask(3), time.time(), lambda sl: True, {}, {}, deepest=0)
    assert views[0].slot_id == nearly_full.id and views[0].free_cpus == [6, 7]
    assert sum(len(v.free_cpus) for v in views) >= C.OFFER_FACTOR * 3 and len(views) == 2  # not 200
    placements = place(_ask(3), views, time.time())
    assert [p.slot_id for p in placements][:2] == [nearly_full.id] * 2  # best fit first


def test_slots_that_cannot_hold_a_request_are_passed_over():
    soon = time.time() + 5
    cap = _memory({_slot("n1", 1, 8, end=soon): [], _slot("n2", 2, 8, mem_mb=50): [], _slot("n3", 3, 8): [],
                   _slot("n4", 4, 8): []})
    views = cap.views(_ask(1), time.time(), lambda sl: sl.node != "n3", {}, {}, deepest=0)
    # n1's lend ends before the timeout, n2 lacks the memory, n3's agent has no session
    assert [v.slot_id for v in views] == ["4@n4"]


def test_leased_cores_are_not_offered():
    cap = _memory({_slot("n1", 1, 2): [], _slot("n2", 2, 4): []})
    views = cap.views(_ask(2), time.time(), lambda sl: True, {"1@n1": {0, 1}}, {"1@n1": 10}, deepest=0)
    assert {v.slot_id: v.free_cpus for v in views} == {"2@n2": [0, 1, 2, 3]}


def test_lanes_are_offered_when_free_cores_cannot_hold_the_claim():
    full = _slot("n1", 1, 2)
    cap = _memory({full: [([0], 100), ([1], 100)], _slot("n2", 2, 4): []})
    assert [v.slot_id for v in cap.views(_ask(2), time.time(), lambda sl: True, {}, {}, deepest=4)] == ["2@n2"]
    views = cap.views(_ask(20), time.time(), lambda sl: True, {}, {}, deepest=4)
    assert {v.slot_id for v in views} == {"1@n1", "2@n2"}
    assert set(next(v for v in views if v.slot_id == "1@n1").queued) == {0, 1}
    assert cap.room(deepest=4, enough=10**6) == 4 * 5 + 2 * 4


def test_placement_through_it_never_overbooks_a_slot():
    rng = random.Random(7)
    for trial in range(30):
        slots = {}
        for i in range(rng.randint(1, 60)):
            cores = rng.randint(1, 16)
            busy = rng.sample(range(cores), rng.randint(0, cores))
            slots[_slot(f"n{i}", i + 1, cores, mem_mb=rng.choice([500, 4000, 64_000]),
                        end=time.time() + rng.choice([5, 3600]))] = [([c], 200) for c in busy]
        cap = _memory(slots)
        asks = [PendingInvocation(i, rng.choice([1, 2]), "1", rng.choice([1, 2, 4]), rng.choice([100, 1000]),
                                  rng.choice([1.0, 60.0]), submitted_at=float(i)) for i in range(rng.randint(1, 80))]
        now = time.time()
        views = cap.views(asks, now, lambda sl: True, {}, {}, deepest=0)
        placements = place(asks, views, now)
        held = {sl.id: (sl, {c for cpus, _ in work for c in cpus}, sum(m for _, m in work)) for sl, work in slots.items()}
        mem_used: dict[str, int] = {}
        cores_used: dict[str, set] = {}
        for p in placements:
            sl, busy, mem = held[p.slot_id]
            assert not set(p.cpus) & busy and not set(p.cpus) & cores_used.get(p.slot_id, set()), trial
            cores_used.setdefault(p.slot_id, set()).update(p.cpus)
            mem_used[p.slot_id] = mem_used.get(p.slot_id, 0) + p.mem_mb
            assert mem + mem_used[p.slot_id] <= sl.mem_mb, trial
        # as many as placement over every slot would place, whenever the slots hold them all twice over
        everything = [SlotView(lent.slot.id, lent.free_cpus, lent.free_mem, lent.slot.lend_end)
                      for lent in cap.slots.values()]
        if len(place(asks, everything, now)) == len(asks) and len(asks) * 2 * 16 <= sum(
                len(v.free_cpus) for v in everything):
            assert len(placements) == len(asks), trial


def _database_memory(database) -> tuple[Hub, C.Capacity, list[int]]:
    """Two nodes' slots in the database, three invocations running on n1's."""
    hub = Hub(Config(db_url=database.url), database)
    with database.session() as s:
        s.add_all([_slot("n1", 1, 4), _slot("n2", 2, 4)])
        fn = D.Function(name="f", owner_uid=UID, owner_gid=UID, entrypoint="m:f", code_dir="/tmp", cores=1,
                        mem_mb=100, timeout_s=5, max_attempts=3)
        s.add(fn)
        s.flush()
        ids = D.add_invocations(s, fn, ["null"] * 3, UID)
        for c, inv in enumerate(s.scalars(D.select(D.Invocation).order_by(D.Invocation.id))):
            inv.attempts, inv.slot_id, inv.node, inv.job_id, inv.slurm_cpus, inv.mem_mb = 1, "1@n1", "n1", 1, [c], 100
            inv.dispatched_at = D.utcnow()
            D.transition(s, inv, State.DISPATCHED)
    cap = C.Capacity(hub)
    with database.session() as s:
        cap.refresh(s)
    return hub, cap, ids


def _free(cap: C.Capacity) -> dict[str, list[int]]:
    return {slot_id: lent.free_cpus for slot_id, lent in sorted(cap.slots.items())}


def _end(database, inv_id: int) -> None:
    with database.session() as s:
        at = D.utcnow()
        D.transition_many(s, [D.Change(inv_id, State.DISPATCHED, State.RUNNING, at),
                              D.Change(inv_id, State.RUNNING, State.SUCCEEDED, at)])


def test_it_follows_marked_changes_and_rereads_the_rest_in_turn(database):
    hub, cap, (a, b, _) = _database_memory(database)
    assert _free(cap) == {"1@n1": [3], "2@n2": [0, 1, 2, 3]} and cap.running_by_user() == {UID: 3}
    _end(database, a)
    hub.work_changed("n1")  # as the agents' room marks a RESULT
    with database.session() as s:
        cap.refresh(s)
    assert _free(cap)["1@n1"] == [0, 3] and cap.running_by_user() == {UID: 2}
    with database.session() as s:  # the lend shrinks, nobody marks it, and n1's work ends unmarked
        s.get(D.Slot, "2@n2").slurm_cpus = [0, 1]
    _end(database, b)
    with database.session() as s:
        cap.refresh(s)
    assert _free(cap)["2@n2"] == [0, 1, 2, 3]  # not yet: no mark
    cap._resync_last -= C.RESYNC_S  # a whole period later every node has been read again
    with database.session() as s:
        cap.refresh(s)
    assert _free(cap) == {"1@n1": [0, 1, 3], "2@n2": [0, 1]} and cap.running_by_user() == {UID: 1}
    with database.session() as s:
        s.get(D.Slot, "1@n1").state = "REVOKED"
    hub.slot_changed("1@n1")
    with database.session() as s:
        cap.refresh(s)
    assert list(cap.slots) == ["2@n2"]
