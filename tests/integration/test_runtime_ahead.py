"""Invocations sent ahead to a warm executor (faas_runtime.invocations): they run back to back
in order, stay held by the agent, and an executor that stops gives back what it had not
begun, so nothing is lost and nothing is reported twice. Real executors, cgroups and users."""
import json
from collections import Counter

from faas_runtime import protocol as P

from .runtime_fixtures import harness, users  # noqa: F401  (fixtures)


def _order(h):
    return [(k, f["invocation_id"]) for k, f in h.sent if k in (P.STARTED, P.RESULT, P.EVICTED)]


def _finals(h):
    return Counter(f["invocation_id"] for k, f in h.sent if k in (P.RESULT, P.EVICTED))


def _queue_behind(h, slot, first_payload, n, user, **run):
    """One running invocation on core 0 and ``n`` waiting behind it, then one loop turn's
    step_ahead (which sends them to its executor)."""
    first = h.run(slot, "runtime_probe:sleep", first_payload, user=user, cpus=[0], **run)
    rest = [h.run(slot, "runtime_probe:sleep", "0.05", user=user, cpus=[0]) for _ in range(n)]
    h.agent.step_ahead()
    return first, rest


def test_calls_sent_ahead_run_in_order_on_one_executor(harness, users):
    h = harness()
    slot = h.lend(40, [1])
    first, rest = _queue_behind(h, slot, "0.2", 5, users["faas-alice"])
    [ex] = h.agent.executors.values()
    assert list(ex.ahead) == rest and not h.agent.waiting
    assert h.agent._held() == sorted([i, 1] for i in [first, *rest])  # still held: heartbeats list them
    values = [json.loads(h.outcome(inv)[1]["value_json"]) for inv in [first, *rest]]
    assert len({v["pid"] for v in values}) == 1  # one warm executor ran them all
    runs = {f["invocation_id"]: f["run_s"] for k, f in h.sent if k == P.RESULT}
    assert all(runs[i] >= 0.05 for i in rest) and runs[first] >= 0.2
    order = _order(h)
    for before, after in zip([first, *rest], rest):  # each began when the one before it ended
        assert order.index((P.RESULT, before)) < order.index((P.STARTED, after))
    assert set(_finals(h).values()) == {1} and not ex.ahead and not h.agent.running


def test_a_cancelled_call_sent_ahead_never_runs(harness, users):
    h = harness()
    slot = h.lend(41, [1])
    first, (dropped, kept) = _queue_behind(h, slot, "0.5", 2, users["faas-alice"])
    h.agent._dispatch({"v": 1, "type": "cancel", "invocation_id": dropped, "attempt": 1})
    [ex] = h.agent.executors.values()
    assert list(ex.ahead) == [kept]
    assert h.outcome(first)[0] == P.RESULT and h.outcome(kept)[0] == P.RESULT
    assert dropped not in _finals(h) and (P.STARTED, dropped) not in _order(h)
    assert [i for i, _ in h.agent._held()] == []


def test_calls_behind_a_timed_out_one_run_on_a_fresh_executor(harness, users):
    h = harness()
    slot = h.lend(42, [1])
    first, rest = _queue_behind(h, slot, "60", 2, users["faas-alice"], timeout_s=1)
    [ex] = h.agent.executors.values()
    kind, f = h.outcome(first)
    assert kind == P.RESULT and f["outcome"] == "timeout"
    for inv in rest:  # given back when the executor was killed, then started again: not lost
        kind, f = h.outcome(inv)
        assert kind == P.RESULT and json.loads(f["value_json"])["pid"] != ex.proc.pid
    assert set(_finals(h).values()) == {1}


def test_a_revoke_evicts_calls_sent_ahead_once_each(harness, users):
    h = harness(grace_s=0.5)
    slot = h.lend(43, [1])
    first, rest = _queue_behind(h, slot, "60", 3, users["faas-alice"])
    while not any(k == P.STARTED for k, _ in h.sent):
        h.step()
    h.agent.revoke(h.agent.slots[slot], "the batch job ended")
    for inv in [first, *rest]:
        kind, f = h.outcome(inv, timeout_s=10)
        assert kind == P.EVICTED and "revoked" in f["reason"]
    assert set(_finals(h).values()) == {1} and not h.agent.waiting and not h.agent.running
