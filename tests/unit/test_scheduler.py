"""Placement rules of coscheduler.scheduler.place (pure logic)."""
from coscheduler.scheduler import Lane, PendingInvocation, SlotView, fair_order, place, place_ahead

NOW = 1_000_000.0


def inv(i, user=1, cores=1, mem=100, timeout=10.0, priority=0, t=None, fn="f"):
    return PendingInvocation(i, user, fn, cores, mem, timeout, priority, float(i if t is None else t))


def slot(sid, cpus, mem=10_000, end=None, warm=()):
    return SlotView(sid, list(cpus), mem, end, frozenset(warm))


def test_fits_by_cores_and_memory():
    out = place([inv(1, cores=2), inv(2, cores=2), inv(3, cores=1)], [slot("a", [4, 5, 6])], NOW)
    assert [(p.invocation_id, p.cpus) for p in out] == [(1, (4, 5)), (3, (6,))]


def test_memory_limits_placement():
    out = place([inv(1, mem=600), inv(2, mem=600)], [slot("a", [1, 2, 3], mem=1000)], NOW)
    assert [p.invocation_id for p in out] == [1]


def test_never_exceeds_remaining_lend_time():
    slots = [slot("short", [1], end=NOW + 5), slot("long", [2], end=NOW + 100)]
    out = place([inv(1, timeout=50), inv(2, timeout=500)], slots, NOW)
    assert [(p.invocation_id, p.slot_id) for p in out] == [(1, "long")]


def test_expired_slot_is_ignored():
    assert place([inv(1, timeout=1)], [slot("a", [1], end=NOW - 1)], NOW) == []


def test_unknown_end_means_no_limit():
    assert len(place([inv(1, timeout=10**6)], [slot("a", [1], end=None)], NOW)) == 1


def test_priority_first_then_users_take_turns():
    flood = [inv(i, user=1) for i in range(1, 101)]
    late = [inv(1000 + i, user=2, t=500 + i) for i in range(3)]
    urgent = [inv(2000, user=3, priority=5, t=999)]
    out = place(flood + late + urgent, [slot("a", range(8))], NOW)
    ids = [p.invocation_id for p in out]
    assert ids[0] == 2000
    # user 2's three invocations are served within the first seven, not after user 1's hundred
    assert {1000, 1001, 1002} <= set(ids[:7])


def test_fair_order_keeps_fifo_per_user():
    order = fair_order([inv(3, user=1), inv(1, user=1), inv(2, user=2)])
    assert [p.invocation_id for p in order] == [1, 2, 3]


def test_prefers_warm_slot_then_tightest():
    slots = [slot("big", range(8)), slot("small", [1, 2]), slot("warm", range(10, 16), warm={"g"})]
    out = place([inv(1, fn="g"), inv(2, fn="f")], slots, NOW)
    assert [(p.invocation_id, p.slot_id) for p in out] == [(1, "warm"), (2, "small")]


def test_inputs_not_modified():
    s = slot("a", [1, 2])
    place([inv(1)], [s], NOW)
    assert s.free_cpus == [1, 2]


def test_unfit_shape_skipped_but_smaller_still_placed():
    out = place([inv(1, cores=4), inv(2, cores=4), inv(3, cores=1)], [slot("a", [1, 2])], NOW)
    assert [p.invocation_id for p in out] == [3]


# -- dispatch-ahead (place_ahead) -------------------------------------------------------


def test_dispatch_ahead_queues_short_functions_behind_running_ones():
    # core 4 free, core 5 runs one invocation (1 s of work expected); f may wait 2 deep
    s = SlotView("a", [4], 10_000, None, frozenset(), {5: Lane(1, 1.0, 100)})
    pending = [inv(i) for i in range(1, 10)]
    out = place_ahead(pending, [s], NOW, depth={"f": 2}, run_time={"f": 1.0})
    per_core = {}
    for p in out:
        per_core.setdefault(p.cpus, []).append(p.invocation_id)
    # core 4: one to run + two to wait; core 5: two more behind the running one; FIFO
    assert {c: len(ids) for c, ids in per_core.items()} == {(4,): 3, (5,): 2}
    assert sorted(p.invocation_id for p in out) == [1, 2, 3, 4, 5]
    assert out[0].invocation_id == 1 and out[0].cpus == (4,)  # the free core first


def test_functions_without_depth_are_never_dispatched_ahead():
    s = SlotView("a", [], 10_000, None, frozenset(), {5: Lane(1, 1.0, 100)})
    assert place_ahead([inv(1)], [s], NOW) == []
    assert place_ahead([inv(1, fn="long")], [s], NOW, depth={"f": 4}) == []


def test_dispatch_ahead_needs_the_lend_to_outlast_the_expected_backlog():
    # 80 s of work expected on the core; the lend ends in 100 s
    s = SlotView("a", [], 10_000, NOW + 100, frozenset(), {5: Lane(2, 80.0, 100)})
    assert place_ahead([inv(1, timeout=30)], [s], NOW, depth={"f": 4}) == []
    out = place_ahead([inv(1, timeout=20)], [s], NOW, depth={"f": 4})
    assert [(p.invocation_id, p.cpus) for p in out] == [(1, (5,))]
    # what this call queues counts too: its run time (else its timeout) adds to the backlog
    out = place_ahead([inv(1, timeout=15), inv(2, timeout=15)], [s], NOW, depth={"f": 4}, run_time={"f": 5.0})
    assert len(out) == 2
    assert len(place_ahead([inv(1, timeout=15), inv(2, timeout=15)], [s], NOW, depth={"f": 4})) == 1


def test_dispatch_ahead_spreads_over_cores_and_respects_each_functions_depth():
    s = SlotView("a", [], 10_000, None, frozenset(), {1: Lane(1, 0.0, 100), 2: Lane(1, 0.0, 100), 3: Lane(3, 0.0, 100)})
    out = place_ahead([inv(i) for i in range(1, 20)], [s], NOW, depth={"f": 2})
    per_core = {}
    for p in out:
        per_core[p.cpus] = per_core.get(p.cpus, 0) + 1
    assert per_core == {(1,): 2, (2,): 2}  # core 3 already carries more than f allows


def test_waiting_invocations_need_memory_only_beyond_what_their_lane_holds():
    # two cores each running a 100 MiB invocation; the slot has 50 MiB left
    s = SlotView("a", [], 50, None, frozenset(), {5: Lane(1, 1.0, 100), 6: Lane(1, 1.0, 100)})
    # same-sized invocations wait behind them at no memory cost: 2 cores x depth 4
    assert len(place_ahead([inv(i, mem=100) for i in range(1, 20)], [s], NOW, depth={"f": 4})) == 8
    # a bigger one needs the difference: 130 - 100 = 30 MiB fits once in 50, not twice,
    # so the second waits behind the first on the same core (no more memory there)
    out = place_ahead([inv(1, mem=130), inv(2, mem=130)], [s], NOW, depth={"f": 4})
    assert [p.invocation_id for p in out] == [1, 2] and out[0].cpus == out[1].cpus


def test_dispatch_ahead_keeps_fair_share():
    s = SlotView("a", [], 10_000, None, frozenset(), {5: Lane(1, 1.0, 100)})
    flood = [inv(i, user=1) for i in range(1, 50)]
    other = [inv(100, user=2, t=1000)]
    out = place_ahead(flood + other, [s], NOW, running={1: 1}, depth={"f": 2})
    # two places behind the running one; user 2 (nothing running) gets the first
    assert [p.invocation_id for p in out] == [100, 1]
