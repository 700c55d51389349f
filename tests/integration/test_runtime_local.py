"""Executors for real, without Slurm: cgroups, identity, containers, warm reuse, eviction.

An Agent is driven step by step (AgentHarness); what it would send the co-scheduler is
recorded. Real cgroups (v1 here), real unprivileged users, real ch-run.
"""
import json
import stat
import time

from faas_runtime import protocol as P

from .runtime_fixtures import harness, python_image, users  # noqa: F401  (fixtures)
from .helpers import FUNCTIONS


def _value(f):
    assert f.get("outcome") == "ok", f
    return json.loads(f["value_json"])


def test_executor_runs_as_the_owner_confined_to_the_lent_cpus(harness, users):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(7, [1, 1])
    kind, f = h.outcome(h.run(slot, "runtime_probe:whoami", '"hi"', user=alice))
    v = _value(f)
    assert (v["uid"], v["gid"]) == (alice.pw_uid, alice.pw_gid)
    team = __import__("grp").getgrnam("faas-team").gr_gid
    assert team in v["groups"] and 0 not in v["groups"]
    assert v["cpus"] == [1] == f["cpus"]
    ex = next(iter(h.agent.executors.values()))
    # its own cgroup below the agent's subtree, with the lent CPUs as its cpuset
    assert f"/{ex.name}" in v["cgroup"]
    assert (ex.cgroup.dirs["cpuset"] / "cpuset.cpus").read_text().strip() == "1"
    assert int((ex.cgroup.dirs["memory"] / "memory.limit_in_bytes").read_text()) == 128 << 20
    # results and sockets are the owner's alone
    st = ex.run_dir.stat()
    assert st.st_uid == alice.pw_uid and stat.S_IMODE(st.st_mode) == 0o700
    assert v["env"] == sorted(["HOME", "LANG", "LOGNAME", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH",
                               "SLURM_FAAS_JOB_ID", "SLURM_FAAS_SLOT", "USER"])  # a clean environment


def test_warm_executor_is_reused_then_retired_after_keep_warm(harness, users):
    h = harness(keep_warm_s=1.0)
    alice = users["faas-alice"]
    slot = h.lend(8, [0, 1])
    pids = [_value(h.outcome(h.run(slot, "runtime_probe:whoami", user=alice, os_cpus=[c]))[1])["pid"] for c in (0, 1, 0)]
    assert len(set(pids)) == 1  # one warm executor served all three
    [ex] = h.agent.executors.values()
    deadline = time.monotonic() + 10
    while h.agent.executors and time.monotonic() < deadline:
        h.step()
    assert not h.agent.executors
    assert not any(d.exists() for d in ex.cgroup.dirs.values())


def test_memory_hog_is_killed_alone_and_reported(harness, users):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(9, [0, 1])
    sleeper = h.run(slot, "runtime_probe:sleep", "1.5", user=alice)
    hog = h.run(slot, "runtime_probe:hog", user=alice, mem_mb=64)
    kind, f = h.outcome(hog)
    assert kind == P.RESULT and f["outcome"] == "error"
    assert "memory limit (64 MiB)" in f["error"]
    kind, f = h.outcome(sleeper)  # its neighbour on the same slot finishes normally
    assert _value(f)["slept"] == 1.5


def test_fork_bomb_stops_at_the_pids_limit(harness, users):
    h = harness(pids_max=40)
    slot = h.lend(10, [1])
    kind, f = h.outcome(h.run(slot, "runtime_probe:forkbomb", user=users["faas-bob"]))
    v = _value(f)
    assert v["forked"] < 40 and "Resource temporarily unavailable" in v["error"]
    # the children it left are killed with the executor, and its cgroup goes away
    deadline = time.monotonic() + 10
    while h.agent.executors and time.monotonic() < deadline:
        h.step()
    assert not h.agent.executors


def test_revoke_terminates_kills_and_removes_the_cgroup(harness, users):
    h = harness(grace_s=0.5)
    slot = h.lend(11, [1])
    inv = h.run(slot, "runtime_probe:sleep", "60", user=users["faas-alice"])
    while not any(k == P.STARTED for k, _ in h.sent):
        h.step()
    [ex] = h.agent.executors.values()
    time.sleep(0.5)  # the function is inside its call
    h.agent.revoke(h.agent.slots[slot], "the batch job ended")
    kind, f = h.outcome(inv, timeout_s=30)  # a 60 s sleep that ends early: it was stopped
    assert kind == P.EVICTED and "revoked" in f["reason"]
    assert not any(d.exists() for d in ex.cgroup.dirs.values())
    assert ex.proc.poll() is not None


def test_timeout_kills_the_executor(harness, users):
    h = harness()
    slot = h.lend(12, [0])
    kind, f = h.outcome(h.run(slot, "runtime_probe:sleep", "60", user=users["faas-alice"], timeout_s=1))
    assert f["outcome"] == "timeout"


def test_a_restarted_agent_kills_executors_a_crashed_one_left(harness, users, tmp_path):
    h = harness()
    slot = h.lend(13, [0])
    h.run(slot, "runtime_probe:sleep", "60", user=users["faas-alice"])
    [ex] = h.agent.executors.values()
    h.step()
    assert ex.cgroup.pids()
    # a second agent with the same work directory = the same agent after a crash
    from faas_runtime.agent import Agent

    again = Agent(node="t1", spool=tmp_path, endpoint="tcp://127.0.0.1:9", workdir=h.agent.workdir)
    try:
        assert not ex.cgroup.pids() and not any(d.exists() for d in ex.cgroup.dirs.values())
        ex.proc.wait(timeout=5)
    finally:
        again.ctx.destroy(linger=0)
    h.agent.executors.clear()
    h.agent.running.clear()


def test_function_in_a_charliecloud_image(harness, users, python_image):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(14, [1])
    kind, f = h.outcome(h.run(slot, "runtime_probe:whoami", '{"x": 1}', user=alice, image=str(python_image),
                              runtime="charliecloud"))
    v = _value(f)
    assert v["container"] and v["python"] == "/usr/bin/python3" and v["code"] == "/faas/code"
    assert v["uid"] == alice.pw_uid and v["cpus"] == [1] and v["echo"] == {"x": 1}


def test_missing_image_or_runtime_fails_with_the_reason(harness, users, tmp_path):
    h = harness()
    slot = h.lend(15, [0])
    kind, f = h.outcome(h.run(slot, "runtime_probe:whoami", user=users["faas-alice"],
                              image=str(tmp_path / "no-such-image"), runtime="charliecloud"), timeout_s=5)
    assert f["outcome"] == "error" and "no-such-image does not exist" in f["error"]
    kind, f = h.outcome(h.run(slot, "runtime_probe:whoami", user=users["faas-alice"], image="/x.sif",
                              runtime="apptainer"), timeout_s=5)
    assert f["outcome"] == "error" and "apptainer is not installed" in f["error"]
    kind, f = h.outcome(h.run(slot, "no_such_module:f", user=users["faas-alice"]), timeout_s=30)
    assert f["outcome"] == "error" and "cannot load no_such_module:f" in f["error"]


def _to_agent(h, ctx, n, parts):
    """Deliver ``parts`` to the agent's receive step as if the co-scheduler sent them."""
    import zmq

    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"inproc://agent-bad-{id(h)}-{n}")
    b.connect(f"inproc://agent-bad-{id(h)}-{n}")
    real, h.agent.sock = h.agent.sock, b
    try:
        h.sent.clear()
        a.send_multipart(parts)
        b.poll(2000)
        h.agent.step_receive()  # never raises
    finally:
        h.agent.sock = real
        a.close(linger=0)
        b.close(linger=0)


def test_bad_messages_to_the_agent_get_typed_errors(harness):
    import msgpack
    import zmq

    h = harness(cgroups=False)
    ctx = zmq.Context.instance()
    key = h.agent._session_key = b"k" * 32  # as after a WELCOME
    cases = [(b"\xc1junk", P.E_MALFORMED), (P.encode(P.RUN)[:-1], P.E_MALFORMED),
             (msgpack.packb({"v": 1, "type": "bogus"}), P.E_UNKNOWN_TYPE),
             (msgpack.packb({"v": 2, "type": "run"}), P.E_VERSION),
             (msgpack.packb({"v": 1, "type": "run"}), P.E_INVALID)]  # missing fields
    for n, (frame, code) in enumerate(cases):
        _to_agent(h, ctx, n, [frame, P.mac(key, frame)])
        assert h.sent and h.sent[0][0] == P.ERROR and h.sent[0][1]["code"] == code, (frame, h.sent)


def test_the_agent_takes_orders_only_with_its_sessions_mac(harness, users):
    """A RUN without the session's MAC, or with another key's, is dropped: nothing starts."""
    import zmq

    h = harness(cgroups=False)
    ctx = zmq.Context.instance()
    h.agent._session_key = b"k" * 32
    slot = h.lend(11, [0])
    run = P.encode(P.RUN, invocation_id=99, attempt=1, slot_id=slot, job_id=11, os_cpus=[0], mem_mb=64,
                   timeout_s=5, uid=users["faas-alice"].pw_uid, entrypoint="runtime_probe:whoami",
                   code_dir=str(FUNCTIONS), payload_json="null")
    for n, parts in enumerate([[run], [run, P.mac(b"x" * 32, run)], [run, b"short"]]):
        _to_agent(h, ctx, 100 + n, parts)
        assert h.sent == [] and not h.agent.running and not h.agent.executors


# -- dispatch-ahead: RUN messages that wait at the agent for their cores ------------------


def _order(h, kinds=(P.STARTED, P.RESULT, P.EVICTED)):
    return [(k, f["invocation_id"]) for k, f in h.sent if k in kinds]


def test_invocations_dispatched_ahead_wait_for_their_core_and_start_in_order(harness, users):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(20, [0, 1])
    a1, a2, a3 = (h.run(slot, "runtime_probe:sleep", "0.3", user=alice, cpus=[0]) for _ in range(3))
    b1 = h.run(slot, "runtime_probe:sleep", "0.3", user=alice, cpus=[1])
    assert sorted(h.agent.running) == [a1, b1] and list(h.agent.waiting) == [a2, a3]
    assert h.agent._held() == sorted([i, 1] for i in (a1, a2, a3, b1))  # [id, attempt]: what its heartbeat reports
    for inv in (a1, a2, a3, b1):
        kind, f = h.outcome(inv)
        assert kind == P.RESULT and _value(f)["slept"] == 0.3 and f["run_s"] >= 0.3
    order = _order(h)
    # on core 0 each starts only after the one before it ended, in the order sent
    assert order.index((P.RESULT, a1)) < order.index((P.STARTED, a2)) < order.index((P.RESULT, a2)) \
        < order.index((P.STARTED, a3))
    assert order.index((P.STARTED, b1)) < order.index((P.RESULT, a1))  # core 1 did not wait
    assert not h.agent.waiting


def test_revoke_and_cancel_reach_invocations_that_wait(harness, users):
    h = harness(grace_s=0.5)
    alice = users["faas-alice"]
    slot = h.lend(21, [1])
    running = h.run(slot, "runtime_probe:sleep", "60", user=alice, cpus=[0])
    cancelled, waiting = (h.run(slot, "runtime_probe:sleep", "0", user=alice, cpus=[0]) for _ in range(2))
    h.agent._dispatch({"v": 1, "type": "cancel", "invocation_id": cancelled, "attempt": 1})
    assert list(h.agent.waiting) == [waiting]
    h.agent.revoke(h.agent.slots[slot], "the batch job ended")
    kind, f = h.outcome(waiting, timeout_s=10)
    assert kind == P.EVICTED and "revoked" in f["reason"]
    kind, f = h.outcome(running, timeout_s=10)
    assert kind == P.EVICTED
    assert not any(fields.get("invocation_id") == cancelled for _, fields in h.sent)  # it never started
    assert not h.agent.waiting and not h.agent.running


def test_a_waiting_invocation_is_handed_back_unstarted_when_the_lend_got_too_short(harness, users):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(22, [1], end_time=time.time() + 20)  # the lend ends in 20 s
    first = h.run(slot, "runtime_probe:sleep", "0.2", user=alice, cpus=[0], timeout_s=5)
    late = h.run(slot, "runtime_probe:sleep", "0", user=alice, cpus=[0], timeout_s=60)
    assert h.outcome(first)[0] == P.RESULT
    kind, f = h.outcome(late)
    assert kind == P.EVICTED and f["unstarted"] is True and "before its timeout" in f["reason"]
    assert (P.STARTED, late) not in _order(h)


def test_a_waiting_invocation_that_cannot_start_leaves_its_core_to_the_next(harness, users, tmp_path):
    h = harness()
    alice = users["faas-alice"]
    slot = h.lend(23, [1])
    first = h.run(slot, "runtime_probe:sleep", "0.2", user=alice, cpus=[0])
    broken = h.run(slot, "runtime_probe:sleep", "0", user=alice, cpus=[0], runtime="charliecloud",
                   image=str(tmp_path / "no-such-image"))
    last = h.run(slot, "runtime_probe:sleep", "0", user=alice, cpus=[0])
    assert h.outcome(first)[0] == P.RESULT
    kind, f = h.outcome(broken)
    assert kind == P.RESULT and f["outcome"] == "error" and "could not start the function" in f["error"]
    kind, f = h.outcome(last)
    assert kind == P.RESULT and _value(f)["slept"] == 0
