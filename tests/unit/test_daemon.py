"""The co-scheduler's loop in-process, on SQLite and PostgreSQL, with agents played by
ZeroMQ sockets in this test and Slurm by a stub: batches, quotas, cancel, dead agents,
reconciliation, and the submit-function CLI (CliRunner) against it. Identity is stubbed
(munge is exercised by the integration tests)."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Optional

import pytest
import zmq
from click.testing import CliRunner

from coscheduler import db as D
from coscheduler.config import Config, UserQuota
from coscheduler.daemon import Coscheduler
from faas_runtime import protocol as P
from faas_runtime import queue_client as client_mod

from .daemon_harness import (UID, FakeAgent, Harness, StubSlurm, _count, _port, client,  # noqa: F401  (fixtures)
                             harness_factory, passes_after, wait_for)

def test_batch_runs_every_invocation_exactly_once(client):
    agent = client.harness.agent()
    ids = client.invoke_batch("echo", [json.dumps(i) for i in range(300)], chunk=128)
    assert len(ids) == len(set(ids)) == 300
    rows = client.wait_many(ids, timeout_s=60)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    assert sorted(r["invocation_id"] for r in agent.runs) == sorted(ids)
    assert json.loads(client.result_json(ids[7])) == 7
    hist = [h[0] for h in client.status(ids[0])["history"]]
    assert hist == ["QUEUED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    assert agent.runs[0]["image"] is None and "function_id" in agent.runs[0]


def test_dispatch_ahead_fills_each_core_to_its_depth_and_an_unstarted_handback_keeps_the_attempt(
        harness_factory):
    h = harness_factory(dispatch_ahead_s=0.01, dispatch_ahead_max=3)
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10)
        agent = h.agent(cores=2, run_s=0.001)  # 1 ms per call: 10 fit in 10 ms, capped at 3
        first = c.invoke_batch("echo", ["1"] * 4)
        c.wait_many(first, timeout_s=30)
        assert all(len(r["cpus"]) == 1 for r in agent.runs)
        agent.hold = True  # the agent now keeps what it gets: nothing finishes
        held = c.invoke_batch("echo", ["2"] * 20)
        wait_for(lambda: len(agent.runs) == 4 + 8)
        passes_after(h, 2)  # and no more come: 2 cores x (1 + 3 waiting)
        assert len(agent.runs) == 12 and _count(c, "DISPATCHED") == 8
        per_core = {}
        for run in agent.runs[4:]:
            per_core[tuple(run["cpus"])] = per_core.get(tuple(run["cpus"]), 0) + 1
        assert per_core == {(0,): 4, (1,): 4}
        assert [r["invocation_id"] for r in agent.runs[4:]] == held[:8]  # FIFO
        # The agent hands one back unstarted (its lend became too short): requeued with
        # its attempt given back, and dispatched again into the room it left.
        back = agent.runs[-1]
        agent.send(P.EVICTED, invocation_id=back["invocation_id"], attempt=back["attempt"], unstarted=True,
                   reason="the lend ends in 3 s, before its timeout")
        wait_for(lambda: len(agent.runs) == 13)
        again = agent.runs[-1]
        assert again["invocation_id"] == back["invocation_id"] and again["attempt"] == back["attempt"] == 1
        st = c.status(back["invocation_id"])
        assert [e[0] for e in st["history"]] == ["QUEUED", "DISPATCHED", "EVICTED", "QUEUED", "DISPATCHED"]
        assert st["attempts"] == 1


def test_bad_batches_write_nothing(client):
    with pytest.raises(client_mod.RequestError, match="no function named 'nope'"):
        client.invoke_batch("nope", ["1"])
    with pytest.raises(client_mod.RequestError, match="invocation 3 of the batch: payload is not JSON"):
        client.invoke_batch("echo", ["1", "2", "{oops"])
    with pytest.raises(client_mod.RequestError, match="at most 1048576 bytes"):
        client.invoke_batch("echo", ["1", json.dumps("x" * (1 << 20))])
    assert client.list() == []


def test_queued_quota_refuses_the_whole_request(harness_factory):
    h = harness_factory(max_queued=5, user_quotas={UID + 1: UserQuota(max_queued=100)})
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp")
        c.invoke_batch("echo", ["1"] * 4)
        with pytest.raises(client_mod.RequestError, match="quota exceeded: uid 4242 may have at most 5") as exc:
            c.invoke_batch("echo", ["1"] * 2)
        assert exc.value.code == P.E_QUOTA
        with pytest.raises(client_mod.RequestError, match="quota exceeded"):
            c.check_batch("echo", 2)
        assert len(c.list()) == 4


def test_running_quota_limits_concurrency(harness_factory):
    h = harness_factory(max_running=2)
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="slow", entrypoint="m:f", code_dir="/tmp")
        agent = h.agent(answer=False)
        c.invoke_batch("slow", ["1"] * 6)
        wait_for(lambda: len(agent.runs) == 2)
        passes_after(h, 2)  # scheduling passes that saw the queue and the quota
        assert len(agent.runs) == 2
        assert _count(c, "QUEUED") == 4 and _count(c, "RUNNING") == 2


def test_cancel_queued_and_running(client):
    agent = client.harness.agent(answer=False)
    running = client.invoke("echo", "1")
    wait_for(lambda: client.status(running)["state"] == "RUNNING")
    assert client.cancel(running) == "CANCELLED"
    wait_for(lambda: [m["invocation_id"] for m in agent.cancels] == [running])
    agent.close()
    client.harness.agents.remove(agent)
    queued = client.invoke("echo", "2")
    assert client.cancel(queued) == "CANCELLED"
    with pytest.raises(client_mod.RequestError, match="already ended CANCELLED"):
        client.cancel(queued)


def test_cancel_every_unfinished_invocation_of_a_function(client):
    agent = client.harness.agent(answer=False, cores=2)
    done = client.invoke("echo", "0")
    wait_for(lambda: client.status(done)["state"] == "RUNNING")
    client.harness.agents.remove(agent)
    agent.close()  # nothing answers from now on: the next ones stay on the slot or queued
    held = client.invoke_batch("echo", ["1"] * 300)
    out = _cli(client, "cancel", "--function", "echo", "-o", "json")
    assert out.exit_code == 0 and json.loads(out.stdout) == {"function": "echo", "cancelled": 301}
    states = {r["state"] for r in client.list(ids=[done, *held], limit=1000)}
    assert states == {"CANCELLED"}
    assert [h[0] for h in client.status(done)["history"]][-1] == "CANCELLED"
    assert client.cancel_function("echo") == 0
    out = _cli(client, "cancel", "--function", "nope")
    assert out.exit_code == 1 and "no function named 'nope'" in out.stderr
    out = _cli(client, "cancel")
    assert out.exit_code == 2 and "give invocation ids, or --function NAME" in out.stderr


def test_dead_agent_work_is_requeued_and_runs_elsewhere(client):
    client.harness.daemon.config.agent_grace_s = 1.0
    silent = client.harness.agent("n1", 1, answer=False)
    inv = client.invoke("echo", "1")
    wait_for(lambda: client.status(inv)["state"] == "RUNNING")
    silent.beating = False
    silent.stop = True  # no more heartbeats: declared dead after agent_grace_s
    wait_for(lambda: "n1" not in client.harness.daemon.agents)
    st = client.status(inv)
    assert st["state"] == "QUEUED" and st["attempts"] == 1
    assert "stopped answering" in st["history"][-2][2]
    client.harness.agent("n2", 2)
    final = client.wait(inv, timeout_s=30)
    assert final["state"] == "SUCCEEDED" and final["attempts"] == 2 and final["node"] == "n2"


def _requeued_from_a_silent_agent(client):
    """An invocation running on n1's agent, which then falls silent past its grace."""
    client.harness.daemon.config.agent_grace_s = 1.0
    agent = client.harness.agent("n1", 1, answer=False)
    inv = client.invoke("echo", "1")
    wait_for(lambda: client.status(inv)["state"] == "RUNNING")
    agent.beating = False
    wait_for(lambda: client.status(inv)["state"] == "QUEUED")
    assert client.status(inv)["attempts"] == 1
    return agent, inv


def test_a_silent_agent_that_comes_back_keeps_work_not_yet_dispatched_again(client):
    a1, inv = _requeued_from_a_silent_agent(client)
    a1.beating = True  # its next heartbeat is refused, its HELLO lists what it still runs
    wait_for(lambda: client.status(inv)["state"] == "RUNNING")
    st = client.status(inv)
    assert (st["node"], st["attempts"]) == ("n1", 1) and "adopted back" in st["history"][-2][2]
    a1.finish.append(inv)
    final = client.wait(inv, timeout_s=30)
    assert (final["state"], final["attempts"]) == ("SUCCEEDED", 1)
    assert json.loads(client.result_json(inv)) == "n1"


def test_a_silent_agent_that_comes_back_stops_the_later_copy_elsewhere(client):
    a1, inv = _requeued_from_a_silent_agent(client)
    a2 = client.harness.agent("n2", 2, answer=False)
    wait_for(lambda: client.status(inv)["state"] == "RUNNING" and client.status(inv)["node"] == "n2")
    a1.beating = True
    wait_for(lambda: [(c["invocation_id"], c["attempt"]) for c in a2.cancels] == [(inv, 2)])  # the later copy
    st = client.status(inv)
    assert (st["state"], st["node"], st["attempts"]) == ("RUNNING", "n1", 1)
    assert "the later copy on n2 (attempt 2) stopped" in st["history"][-1][2]
    a1.finish.append(inv)
    final = client.wait(inv, timeout_s=30)
    assert (final["state"], final["node"]) == ("SUCCEEDED", "n1")
    assert json.loads(client.result_json(inv)) == "n1"


def test_reconcile_revokes_a_job_slurm_no_longer_runs(client):
    agent = client.harness.agent(answer=False)
    inv = client.invoke("echo", "1")
    wait_for(lambda: client.status(inv)["state"] == "RUNNING")
    del client.harness.slurm.alive[1]  # the job ended; the plugin's revoke never came
    wait_for(lambda: client.harness.slot_state("1@n1") == "REVOKED")
    wait_for(lambda: [m["job_id"] for m in agent.revokes] == [1])
    st = client.status(inv)
    assert st["state"] == "QUEUED" and st["attempts"] == 1
    assert "job 1 is gone in Slurm" in " ".join(h[2] or "" for h in st["history"])


def test_fair_share_serves_the_small_user_early(harness_factory, monkeypatch):
    h = harness_factory()
    uid = {"v": UID}
    monkeypatch.setattr(client_mod, "make_credential", lambda digest, socket=None: str(uid["v"]))
    with client_mod.Client(h.endpoint, timeout_s=20) as c:
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp")
        c.invoke_batch("echo", ["1"] * 500)
        uid["v"] = UID + 1
        c.register(name="echo", entrypoint="m:f", code_dir="/tmp")
        few = c.invoke_batch("echo", ["2"] * 5)
        agent = h.agent(cores=2)
        wait_for(lambda: set(few) <= {r["invocation_id"] for r in agent.runs})
        order = [r["invocation_id"] for r in agent.runs]
        assert max(order.index(i) for i in few) < 20  # not after the other user's 500


def test_functions_register_update_show_delete(client):
    client.invoke("echo", "1")
    fn = client.update("echo", cores=2, image="/img/py.sqfs", runtime="charliecloud")
    assert (fn["cores"], fn["image"], fn["runtime"], fn["mem_mb"]) == (2, "/img/py.sqfs", "charliecloud", 100)
    assert client.function("echo")["invocations"] == {"QUEUED": 1}
    with pytest.raises(client_mod.RequestError, match="has 1 queued or running"):
        client.delete("echo")
    assert client.delete("echo", force=True)["cancelled"] == 1
    assert client.functions() == []
    with pytest.raises(client_mod.RequestError, match="no function named 'echo'"):
        client.invoke("echo", "1")
    assert client.list()[0]["function"] == "echo" and client.list()[0]["state"] == "CANCELLED"
    client.register(name="echo", entrypoint="m:g", code_dir="/tmp")  # the name is free again
    with pytest.raises(client_mod.RequestError, match="runtime must be one of"):
        client.update("echo", runtime="docker")
    with pytest.raises(client_mod.RequestError, match="bad function name"):
        client.register(name="../x", entrypoint="m:f", code_dir="/tmp")


# -- the submit-function command line against the in-process co-scheduler -------------


def _cli(client, *argv):
    from coscheduler.cli.submit import main

    return CliRunner().invoke(main, ["--coscheduler", client.endpoint, *argv])


def test_cli_batch_list_status_cancel(client, tmp_path):
    client.harness.agent()
    batch = tmp_path / "b.jsonl"
    batch.write_text("".join(f'{{"n": {i}}}\n' for i in range(250)) + "\n")
    out = _cli(client, "invoke", "echo", "--batch", str(batch), "-o", "json")
    assert out.exit_code == 0, out.output + out.stderr
    ids = json.loads(out.stdout)["invocation_ids"]
    assert len(ids) == 250
    out = _cli(client, "wait", *map(str, ids[:3]), "-o", "json")
    assert [r["state"] for r in json.loads(out.stdout)] == ["SUCCEEDED"] * 3
    out = _cli(client, "invoke", "echo", "--batch", str(batch), "--wait")
    assert out.exit_code == 0 and out.stdout.strip() == "SUCCEEDED 250"
    rows = json.loads(_cli(client, "list", "--state", "succeeded", "--limit", "1000", "-o", "json").stdout)
    assert len(rows) == 500
    assert json.loads(_cli(client, "result", str(ids[5]), "-o", "json").stdout)["result"] == {"n": 5}
    doc = json.loads(_cli(client, "show", "echo", "-o", "json").stdout)
    assert doc["invocations"] == {"SUCCEEDED": 500}
    assert "echo" in _cli(client, "functions").stdout


@pytest.mark.parametrize("lines,message", [
    (['{"a": 1}', "{broken"], "line 2: not JSON"),
    ([], "no payloads"),
])
def test_cli_bad_batch_file_writes_nothing(client, tmp_path, lines, message):
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(lines))
    out = _cli(client, "invoke", "echo", "--batch", str(batch))
    assert out.exit_code == 1 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert client.list() == []


def test_cli_errors_are_one_line(client, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text('"small"\n' + json.dumps("x" * (1 << 20)) + "\n")
    for argv, message in [
        (["invoke", "nope"], "no function named 'nope'"),
        (["invoke", "echo", "--payload", "{x"], "not JSON"),
        (["invoke", "echo", "--batch", str(big)], "payload 2 is 1048578 bytes"),
        (["register", "f", "--entrypoint", "m:f", "--code", str(tmp_path), "--mem", "12Q"], "--mem"),
        (["update", "echo"], "nothing to change"),
        (["cancel", "99999"], "no invocation 99999"),
        (["delete", "nope"], "no function named 'nope'"),
    ]:
        out = _cli(client, *argv)
        assert out.exit_code != 0, argv
        assert message in out.stderr, (argv, out.stderr)
    assert client.list() == []


def test_cli_register_update_delete(client, tmp_path):
    out = _cli(client, "register", "fn2", "--entrypoint", "m:f", "--code", str(tmp_path), "--mem", "1G",
               "--image", "/img/a.sqfs", "--runtime", "charliecloud", "-o", "json")
    assert out.exit_code == 0, out.stderr
    out = _cli(client, "update", "fn2", "--timeout", "5")
    assert out.exit_code == 0 and "updated fn2" in out.stdout
    fn = json.loads(_cli(client, "show", "fn2", "-o", "json").stdout)
    assert (fn["mem_mb"], fn["timeout_s"], fn["image"], fn["runtime"]) == (1024, 5.0, "/img/a.sqfs", "charliecloud")
    assert _cli(client, "delete", "fn2").stdout.strip() == "deleted fn2"


# -- agents' reports in bulk ----------------------------------------------------------


@pytest.fixture
def bare_daemon(database):
    """A co-scheduler that is not running its loop: its steps are called by the test."""
    from coscheduler.hub import AgentSession

    config = Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}")
    d = Coscheduler(config, database, StubSlurm(), verify=lambda cred, digest: int(cred))
    d.hub.add_session(AgentSession("n1", b"agent:n1", b"k" * 32, time.monotonic()))
    yield d
    d.sock.close()
    d.ctx.term()


def _on_slot(database, n, state, max_attempts=3):
    """``n`` invocations dispatched to 1@n1 (attempt 1), then taken to ``state``."""
    from faas_runtime.states import State

    with database.session() as s:
        fn = D.Function(name=f"f{state}{s.scalar(D.select(D.func.count(D.Function.id)))}", owner_uid=UID,
                        owner_gid=UID, entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=1, timeout_s=5,
                        max_attempts=max_attempts)
        s.add(fn)
        s.flush()
        ids = D.add_invocations(s, fn, ["null"] * n, UID)
        for inv in s.scalars(D.select(D.Invocation).where(D.Invocation.id.in_(ids))):
            inv.attempts, inv.slot_id, inv.node, inv.job_id, inv.slurm_cpus = 1, "1@n1", "n1", 1, [0]
            inv.dispatched_at = D.utcnow()
            D.transition(s, inv, State.DISPATCHED)
            if state != "DISPATCHED":
                D.transition(s, inv, State(state))
    return ids


def _msg(kind, inv_id, attempt=1, **fields):
    return (b"agent:n1", {"v": P.VERSION, "type": kind, "node": "n1", "invocation_id": inv_id, "attempt": attempt,
                          **fields})


def _states_and_history(database, ids):
    with database.session() as s:
        return {i: (s.get(D.Invocation, i).state, [e.to_state for e in s.get(D.Invocation, i).events])
                for i in ids}


def test_a_batch_of_reports_gives_exactly_the_right_states_and_events(bare_daemon, database):
    folded, stale, started, evicted, failed, timed_out = _on_slot(database, 6, "DISPATCHED")
    (cancelled,) = _on_slot(database, 1, "CANCELLED")
    running = _on_slot(database, 1, "RUNNING")[0]
    ok = {"outcome": "ok", "value_json": "7", "cpus": [0]}
    batch = [
        _msg(P.STARTED, folded), _msg(P.RESULT, folded, **ok),  # folded into one write, three events
        _msg(P.STARTED, stale, attempt=0), _msg(P.RESULT, stale, attempt=0, **ok),  # an earlier attempt
        _msg(P.STARTED, started),
        _msg(P.STARTED, evicted), _msg(P.EVICTED, evicted, reason="oom"),
        _msg(P.RESULT, evicted, **ok),  # after the eviction requeued it: ignored
        _msg(P.RESULT, failed, outcome="error", error="boom"),
        _msg(P.RESULT, timed_out, outcome="timeout"),
        _msg(P.RESULT, cancelled, **ok),  # no longer on a slot: ignored
        _msg(P.RESULT, running, **ok),
        _msg(P.RESULT, 10**9, **ok),  # no such invocation: ignored
        (b"agent:n1", {"v": P.VERSION, "type": P.RESULT, "node": "n1", "invocation_id": "x"}),  # malformed
        (b"agent:n9", {"v": P.VERSION, "type": P.STARTED, "node": "n9", "invocation_id": started, "attempt": 1}),
    ]
    bare_daemon.agent_room.batch(batch)
    for _ in range(2):  # a STARTED no report followed is written at the end of the next turn (started.py)
        bare_daemon.agent_room.step_liveness()
    got = _states_and_history(database, [folded, stale, started, evicted, failed, timed_out, cancelled, running])
    q, d, r = "QUEUED", "DISPATCHED", "RUNNING"
    assert got == {
        folded: ("SUCCEEDED", [q, d, r, "SUCCEEDED"]),
        stale: (d, [q, d]),
        started: (r, [q, d, r]),
        evicted: (q, [q, d, r, "EVICTED", q]),
        failed: ("FAILED", [q, d, "FAILED"]),
        timed_out: ("TIMED_OUT", [q, d, "TIMED_OUT"]),
        cancelled: ("CANCELLED", [q, d, "CANCELLED"]),
        running: ("SUCCEEDED", [q, d, r, "SUCCEEDED"]),
    }
    with database.session() as s:
        inv = s.get(D.Invocation, folded)
        assert (inv.result, inv.ran_on_cpus) == ("7", [0])
        assert s.get(D.Invocation, failed).error == "boom"
        assert s.get(D.Invocation, timed_out).error == "timed out"
        ev = s.get(D.Invocation, evicted)
        assert ev.slot_id is None and ev.attempts == 1 and ev.events[-2].reason == "oom"
        at = [e.at for e in inv.events]
        assert at == sorted(at)
    sent = [P.decode(frames[0]) for _, frames in bare_daemon.hub.outbox]
    errors = [m for m in sent if m["type"] == P.ERROR]
    # attempt 0 and a non-numeric id are refused as invalid; n9 has no session
    assert sorted(e["code"] for e in errors) == [P.E_INVALID, P.E_INVALID, P.E_INVALID, P.E_UNKNOWN_AGENT]
    (ack,) = [m for m in sent if m["type"] == P.ACK]  # every final report stored (or stale) is acknowledged
    assert sorted(map(tuple, ack["reports"])) == sorted(
        (i, 1) for i in (folded, evicted, evicted, failed, timed_out, cancelled, running, 10**9))


def test_reports_around_other_messages_keep_their_order(bare_daemon, database):
    """A revoke between two runs of reports: the result before it counts, the one after is
    about an invocation the revoke requeued."""
    first, second = _on_slot(database, 2, "RUNNING")
    with database.session() as s:
        s.add(D.Slot(id="1@n1", job_id=1, node="n1", owner_uid=0, slurm_cpus=[0, 1], os_cpus=[0, 1], mem_mb=100))
    ok = {"outcome": "ok", "value_json": "1", "cpus": [0]}
    bare_daemon.agent_room.batch([
        _msg(P.RESULT, first, **ok),
        (b"agent:n1", {"v": P.VERSION, "type": P.REVOKE, "node": "n1", "job_id": 1, "reason": "job ended"}),
        _msg(P.RESULT, second, **ok),
    ])
    got = _states_and_history(database, [first, second])
    assert got[first][0] == "SUCCEEDED"
    assert got[second] == ("QUEUED", ["QUEUED", "DISPATCHED", "RUNNING", "EVICTED", "QUEUED"])


def test_a_failing_bulk_write_falls_back_to_one_report_at_a_time(bare_daemon, database, monkeypatch):
    ids = _on_slot(database, 3, "RUNNING")
    real = D.transition_many

    def only_single(s, changes):
        if len({c.invocation_id for c in changes}) > 1:
            raise RuntimeError("bulk write failed")
        real(s, changes)

    monkeypatch.setattr(D, "transition_many", only_single)
    bare_daemon.agent_room.batch([_msg(P.RESULT, i, outcome="ok", value_json="1", cpus=[0]) for i in ids])
    assert {st for st, _ in _states_and_history(database, ids).values()} == {"SUCCEEDED"}
    assert [P.decode(frames[0])["type"] for _, frames in bare_daemon.hub.outbox] == [P.ACK]
