"""Per-user policy in placement (pure): fair-share weights, running quotas and their
per-user overrides, priority classes, and the lend-end rule at its edges. Written so that
the mutants of coscheduler/scheduler.py that `make mutation` makes are caught."""
import pytest

from coscheduler.scheduler import Lane, Policy, fair_order, place, place_ahead

from .test_scheduler import NOW, inv, slot


def _per_user(placements, pending) -> dict[int, int]:
    owner = {p.invocation_id: p.user for p in pending}
    out: dict[int, int] = {}
    for pl in placements:
        out[owner[pl.invocation_id]] = out.get(owner[pl.invocation_id], 0) + 1
    return out


def _two_users(n=8):
    return [inv(i, user=1) for i in range(1, n + 1)] + [inv(100 + i, user=2) for i in range(1, n + 1)]


def test_policy_defaults():
    p = Policy(max_running=4, user_max_running={7: 9}, shares={7: 2.5})
    assert (p.running_limit(7), p.running_limit(8), Policy().running_limit(7)) == (9, 4, None)
    assert (p.share(7), p.share(8)) == (2.5, 1.0)
    assert Policy(shares={7: 0.0}).share(7) > 0  # never a division by zero


@pytest.mark.parametrize("shares,expect", [({}, {1: 2, 2: 2}), ({1: 3.0}, {1: 3, 2: 1}), ({2: 3.0}, {1: 1, 2: 3}),
                                           ({1: 0.5, 2: 1.5}, {1: 1, 2: 3})])
def test_fair_share_weights(shares, expect):
    pending = _two_users()
    assert _per_user(place(pending, [slot("a", range(4))], NOW, policy=Policy(shares=shares)), pending) == expect


def test_weights_count_what_users_already_run():
    pending = _two_users()
    # user 1 already runs 3, user 2 none: with equal shares user 2 gets the next 3 first
    out = place(pending, [slot("a", range(4))], NOW, running={1: 3})
    assert _per_user(out, pending) == {1: 1, 2: 3}
    assert [p.invocation_id for p in out][:3] == [101, 102, 103]


def test_running_quota_and_per_user_override():
    pending = _two_users()
    policy = Policy(max_running=1, user_max_running={2: 3})
    out = place(pending, [slot("a", range(8))], NOW, policy=policy)
    assert _per_user(out, pending) == {1: 1, 2: 3}
    # the quota counts what already runs; exactly at it: nothing more
    out = place(pending, [slot("a", range(8))], NOW, running={1: 1, 2: 2}, policy=policy)
    assert _per_user(out, pending) == {2: 1}
    assert place(pending, [slot("a", range(8))], NOW, policy=Policy(max_running=0)) == []


def test_override_may_be_lower_than_the_default():
    pending = _two_users()
    out = place(pending, [slot("a", range(8))], NOW, policy=Policy(max_running=5, user_max_running={1: 1}))
    assert _per_user(out, pending) == {1: 1, 2: 5}


def test_priority_classes_ignore_fair_share_between_them():
    pending = [inv(1, user=1, priority=0), inv(2, user=1, priority=0), inv(3, user=2, priority=3, t=50),
               inv(4, user=2, priority=3, t=51), inv(5, user=3, priority=-1, t=0)]
    out = place(pending, [slot("a", range(3))], NOW, running={2: 10})
    assert [p.invocation_id for p in out] == [3, 4, 1]
    assert [p.invocation_id for p in fair_order(pending)] == [3, 4, 1, 2, 5]


def test_fair_order_follows_shares():
    pending = _two_users(4)
    order = [p.user for p in fair_order(pending, policy=Policy(shares={2: 3.0}))]
    assert order[:4].count(2) == 3 and sorted(order) == [1] * 4 + [2] * 4
    order = [p.user for p in fair_order(pending, running={2: 2})]
    assert order[:2] == [1, 1]


@pytest.mark.parametrize("timeout,placed", [(99.0, True), (100.0, True), (100.5, False)])
def test_a_lend_must_last_at_least_the_timeout(timeout, placed):
    out = place([inv(1, timeout=timeout)], [slot("a", [1], end=NOW + 100)], NOW)
    assert bool(out) is placed


def test_a_slot_without_memory_or_cores_gets_nothing():
    assert place([inv(1, mem=1)], [slot("a", [1], mem=0)], NOW) == []
    assert place([inv(1)], [slot("a", [])], NOW) == []
    assert place([inv(1, cores=0)], [slot("a", [1])], NOW) == []


def test_dispatch_ahead_honours_quotas_and_the_lend_end():
    pending = [inv(i, user=1) for i in range(1, 7)]
    busy = {0: Lane(1, 1.0, 100.0), 1: Lane(1, 1.0, 100.0)}
    full = slot("a", [], end=NOW + 100)
    full.queued = busy
    out = place_ahead(pending, [full], NOW, depth={"f": 3}, run_time={"f": 1.0}, policy=Policy(max_running=3),
                      running={1: 2})
    assert len(out) == 1  # quota 3, two already on the slot
    short = slot("b", [], end=NOW + 11.5)  # backlog 1 s + timeout 10 s: once per core, not twice
    short.queued = dict(busy)
    out = place_ahead(pending, [short], NOW, depth={"f": 3}, run_time={"f": 1.0})
    assert sorted(len(p.cpus) for p in out) == [1, 1] and len({p.cpus for p in out}) == 2


def test_shares_weigh_what_users_already_run():
    """running 2 at weight 4 (0.5) comes before running 1 at weight 1 (1.0)."""
    pending = [inv(1, user=2, t=0), inv(2, user=1, t=1)]
    policy = Policy(shares={1: 4.0})
    out = place(pending, [slot("a", [1])], NOW, running={1: 2, 2: 1}, policy=policy)
    assert [p.invocation_id for p in out] == [2]
    assert [p.invocation_id for p in fair_order(pending, running={1: 2, 2: 1}, policy=policy)] == [2, 1]


def test_fair_order_alternates_by_usage():
    pending = [inv(i, user=1) for i in range(1, 4)] + [inv(10 + i, user=2, t=10 + i) for i in range(1, 4)]
    assert [p.user for p in fair_order(pending, running={2: 1})] == [1, 1, 2, 1, 2, 2]
    assert [p.user for p in fair_order(pending)] == [1, 2, 1, 2, 1, 2]


def test_place_ahead_applies_quotas_and_running_on_free_cores_too():
    pending = [inv(1, user=1), inv(2, user=1)]
    free = [slot("a", [1, 2])]
    assert place_ahead(pending, free, NOW, running={1: 1}, policy=Policy(max_running=1)) == []
    assert len(place_ahead(pending, free, NOW, running={1: 1}, policy=Policy(max_running=2))) == 1
    # fair share counts what runs: user 2 (nothing running) first on the one free core
    out = place_ahead([inv(1, user=1), inv(2, user=2, t=5)], [slot("a", [1])], NOW, running={1: 3})
    assert [p.invocation_id for p in out] == [2]


def test_edges_of_time_and_memory():
    assert len(place([inv(1, timeout=0.25)], [slot("a", [1], end=NOW + 0.5)], NOW)) == 1
    assert len(place([inv(1, mem=1)], [slot("a", [1], mem=1)], NOW)) == 1
    assert len(place([inv(1, mem=100)], [slot("a", [1], mem=100)], NOW)) == 1


def test_equal_slots_break_ties_in_order():
    out = place([inv(1), inv(2)], [slot("a", [1, 2]), slot("b", [3, 4])], NOW)
    assert [(p.invocation_id, p.slot_id) for p in out] == [(1, "a"), (2, "a")]


def test_a_user_whose_work_fits_nowhere_does_not_block_the_others():
    pending = [inv(1, user=1, cores=5, t=0), inv(2, user=1, cores=0, t=1), inv(3, user=2, t=2), inv(4, user=1, t=3)]
    out = place(pending, [slot("a", range(4))], NOW)
    assert sorted(p.invocation_id for p in out) == [3, 4]


def test_unsorted_input_is_served_fifo_per_user():
    pending = [inv(3, user=1, t=5), inv(2, user=1, t=5), inv(1, user=1, t=5), inv(4, user=1, t=4)]
    out = place(pending, [slot("a", [1, 2])], NOW)
    assert [p.invocation_id for p in out] == [4, 1]


def test_garbage_collection_is_on_again_after_a_tick():
    import gc

    assert gc.isenabled()
    place([inv(1)], [slot("a", [1])], NOW)
    assert gc.isenabled()
    place_ahead([inv(1)], [slot("a", [1])], NOW)
    assert gc.isenabled()


def test_each_function_goes_to_its_own_warm_slot():
    slots = [slot("a", [1, 2], warm={"g"}), slot("b", [3, 4], warm={"f"})]
    out = place([inv(1, fn="g"), inv(2, fn="f")], slots, NOW)
    assert [(p.invocation_id, p.slot_id) for p in out] == [(1, "a"), (2, "b")]


def test_a_user_with_nothing_that_fits_is_passed_over():
    pending = [inv(1, user=1, cores=5, t=0), inv(2, user=1, cores=0, t=1), inv(3, user=2, t=2)]
    assert [p.invocation_id for p in place(pending, [slot("a", range(4))], NOW)] == [3]


def test_depth_one_waits_one_behind_the_running_one():
    busy = slot("a", [], end=NOW + 100)
    busy.queued = {0: Lane(1, 0.1, 100.0)}
    out = place_ahead([inv(1), inv(2)], [busy], NOW, depth={"f": 1}, run_time={"f": 0.1})
    assert [(p.invocation_id, p.cpus) for p in out] == [(1, (0,))]
