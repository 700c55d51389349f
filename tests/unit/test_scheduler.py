"""Placement rules of coscheduler.scheduler.place (pure logic)."""
from coscheduler.scheduler import PendingInvocation, SlotView, fair_order, place

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
