"""The agents' room at scale. Heartbeats: taken off the database transaction as they are
read, checked against the database in bulk by the liveness step (lost RUNs: ``seen`` and
the session's ``began``), and paced by the co-scheduler (the period grows with the agents,
within the liveness grace). LENDs: in bulk, each bad one refused alone, in order with the
other messages; placement's memory of the slots follows them. The co-scheduler's steps are
called by the test; agents are its messages."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
import zmq

from coscheduler import heartbeats as A
from coscheduler import db as D
from coscheduler.config import Config
from coscheduler.daemon import Coscheduler
from coscheduler.hub import AgentSession
from faas_runtime import protocol as P
from faas_runtime import queue_client as client_mod
from faas_runtime.states import State

from .daemon_harness import UID, StubSlurm, _port, wait_for

GRACE_S = 1.0  # dispatch_grace_s: work dispatched longer ago than this may be found lost


@pytest.fixture
def daemon(database):
    config = Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}", dispatch_grace_s=GRACE_S)
    d = Coscheduler(config, database, StubSlurm(), verify=lambda cred, digest: int(cred))
    yield d
    d.sock.close()
    d.ctx.term()


def _session(d: Coscheduler, node: str, began: float) -> bytes:
    identity = f"agent:{node}".encode()
    d.hub.add_session(AgentSession(node, identity, b"k" * 32, time.monotonic(), began=began))
    return identity


def _dispatched(database, node: str, ago_s: list[float]) -> list[int]:
    """Invocations dispatched to ``node`` (attempt 1) ``ago_s`` seconds ago each."""
    with database.session() as s:
        fn = D.Function(name=f"f-{node}", owner_uid=UID, owner_gid=UID, entrypoint="m:f", code_dir="/tmp",
                        cores=1, mem_mb=1, timeout_s=5, max_attempts=3)
        s.add(fn)
        s.flush()
        ids = D.add_invocations(s, fn, ["null"] * len(ago_s), UID)
        for inv, ago in zip(s.scalars(D.select(D.Invocation).where(D.Invocation.id.in_(ids))
                                      .order_by(D.Invocation.id)), ago_s):
            inv.attempts, inv.slot_id, inv.node, inv.job_id, inv.slurm_cpus = 1, f"1@{node}", node, 1, [0]
            inv.dispatched_at = D.utcnow() - dt.timedelta(seconds=ago)
            D.transition(s, inv, State.DISPATCHED)
    return ids


def _states(database, ids: list[int]) -> list[str]:
    with database.session() as s:
        return [State(s.get(D.Invocation, i).state).value for i in ids]


def _beat(d: Coscheduler, identity: bytes, node: str, running: list[int], seen: float, **fields) -> None:
    d.agent_room.heartbeat(identity, {"v": P.VERSION, "type": P.HEARTBEAT, "node": node,
                                      "running": [[i, 1] for i in running], "seen": seen, **fields})


def test_only_work_the_agent_must_have_read_and_does_not_hold_is_requeued(daemon, database):
    now = time.time()
    # n1's session began long ago; its agent had read the RUNs sent up to 5 s ago.
    n1 = _session(daemon, "n1", began=now - 100)
    held, lost, in_flight = _dispatched(database, "n1", [10, 10, 2])
    _beat(daemon, n1, "n1", [held], seen=now - 5)
    # n2's session began after its work was dispatched (a RUN to an earlier connection):
    # the agent read none of it, and never will.
    n2 = _session(daemon, "n2", began=now)
    (gone,) = _dispatched(database, "n2", [3])
    _beat(daemon, n2, "n2", [], seen=0.0)
    with database.session() as s:  # a heartbeat alone writes nothing
        assert s.scalar(D.select(D.func.count()).where(D.InvocationEvent.to_state == State.EVICTED.value)) == 0
    daemon.agent_room.step_liveness()
    assert _states(database, [held, lost, in_flight, gone]) == ["DISPATCHED", "QUEUED", "DISPATCHED", "QUEUED"]
    with database.session() as s:
        assert "does not run it" in s.get(D.Invocation, lost).events[-2].reason


def test_work_dispatched_within_the_grace_is_not_checked(daemon, database):
    n1 = _session(daemon, "n1", began=time.time() - 100)
    (fresh,) = _dispatched(database, "n1", [0])  # its RUN may cross the heartbeat
    _beat(daemon, n1, "n1", [], seen=time.time())
    daemon.agent_room.step_liveness()
    assert _states(database, [fresh]) == ["DISPATCHED"]


def test_a_heartbeat_without_a_session_is_told_to_say_hello(daemon):
    _beat(daemon, b"agent:nobody", "nobody", [], seen=0.0)
    (sent,) = [P.decode(frames[0]) for _, frames in daemon.hub.outbox]
    assert (sent["type"], sent["code"]) == (P.ERROR, P.E_UNKNOWN_AGENT)


def test_the_period_grows_with_the_agents_within_the_liveness_grace(daemon):
    room, grace = daemon.agent_room, daemon.hub.config.agent_grace_s
    assert room.heartbeat_s() == P.HEARTBEAT_INTERVAL_S
    for i in range(5 * A.HEARTBEATS_PER_S):
        _session(daemon, f"n{i}", began=0.0)
    assert room.heartbeat_s() == 5.0
    room.welcoming = 2 * A.HEARTBEATS_PER_S  # a registration storm: counted before their sessions begin
    assert room.heartbeat_s() == 7.0
    room.welcoming = 0
    for i in range(5 * A.HEARTBEATS_PER_S, 100 * A.HEARTBEATS_PER_S):
        _session(daemon, f"n{i}", began=0.0)
    assert room.heartbeat_s() == grace / A.BEATS_PER_GRACE  # several beats per grace, however many agents


def test_an_agent_beating_at_an_old_period_is_told_the_new_one(daemon):
    for i in range(4 * A.HEARTBEATS_PER_S):
        _session(daemon, f"n{i}", began=0.0)
    _beat(daemon, b"agent:n0", "n0", [], seen=0.0, every=1.0)  # welcomed when it was alone
    _beat(daemon, b"agent:n1", "n1", [], seen=0.0, every=4.0)
    _beat(daemon, b"agent:n2", "n2", [], seen=0.0)  # an agent that does not say its period
    sent = [(identity, P.decode(frames[0])) for identity, frames in daemon.hub.outbox]
    assert [(i, m["type"], m["heartbeat_s"], m["reports"]) for i, m in sent] == [(b"agent:n0", P.ACK, 4.0, [])]


def _lend_msg(node: str, job_id: int, cores: int = 2, **record):
    rec = {"job_id": job_id, "node": node, "uid": 0, "slurm_cpus": list(range(cores)), "os_cpus": list(range(cores)),
           "mem_mb": 1000, "end_time": time.time() + 3600, "until_min": 0, **record}
    return (f"agent:{node}".encode(), {"v": P.VERSION, "type": P.LEND, "node": node, "record": rec})


def _slots(database) -> dict[str, tuple[str, int]]:
    with database.session() as s:
        return {sl.id: (sl.state, sl.mem_mb) for sl in s.scalars(D.select(D.Slot))}


def test_lends_in_bulk_each_bad_one_refused_alone_in_order_with_revokes(daemon, database):
    for node in ("n1", "n2"):
        _session(daemon, node, began=time.time())
    daemon.agent_room.batch([
        _lend_msg("n1", 1), _lend_msg("n2", 2),
        _lend_msg("n1", 1),  # announced again (every WELCOME): idempotent
        _lend_msg("n1", 3, slurm_cpus=[0, 1], os_cpus=[0]),  # malformed: refused alone
        _lend_msg("n2", 2, mem_mb=500),  # the memory guard shrank it
        (b"agent:n2", {"v": P.VERSION, "type": P.REVOKE, "node": "n2", "job_id": 2, "reason": "job ended"}),
        _lend_msg("n2", 2),  # after its revoke: a revoked lend never comes back
        _lend_msg("n1", 4),
    ])
    assert _slots(database) == {"1@n1": ("ACTIVE", 1000), "2@n2": ("REVOKED", 500), "4@n1": ("ACTIVE", 1000)}
    errors = [P.decode(frames[0]) for _, frames in daemon.hub.outbox if P.decode(frames[0])["type"] == P.ERROR]
    assert [e["code"] for e in errors] == [P.E_INVALID]
    memory = daemon.dispatcher.capacity  # placement's memory of the active slots follows the writes
    with database.session() as s:
        memory.refresh(s)
    assert sorted(memory.slots) == ["1@n1", "4@n1"]
    daemon.agent_room.batch([(b"agent:n1", {"v": P.VERSION, "type": P.REVOKE, "node": "n1", "job_id": 1})])
    with database.session() as s:
        memory.refresh(s)
    assert sorted(memory.slots) == ["4@n1"]


def test_a_failing_bulk_lend_falls_back_to_one_at_a_time(daemon, database, monkeypatch):
    _session(daemon, "n1", began=time.time())
    real, calls = daemon.agent_room._apply_lend, []

    def fail_in_bulk(s, slot, existing):
        calls.append(slot.id)
        if len(calls) == 2:  # the second LEND of the bulk write
            raise RuntimeError("bulk write failed")
        return real(s, slot, existing)

    monkeypatch.setattr(daemon.agent_room, "_apply_lend", fail_in_bulk)
    daemon.agent_room.batch([_lend_msg("n1", 1), _lend_msg("n1", 2)])
    assert _slots(database) == {"1@n1": ("ACTIVE", 1000), "2@n1": ("ACTIVE", 1000)}


def test_an_agent_beats_at_the_period_it_is_told_after_this_turns_reports(tmp_path):
    from faas_runtime.agent import Agent

    agent = Agent(node="n1", spool=tmp_path / "spool", endpoint="tcp://127.0.0.1:1", workdir=tmp_path / "w",
                  cgroups=False)
    try:
        assert agent.heartbeat_s == P.HEARTBEAT_INTERVAL_S
        agent._dispatch({"type": P.ACK, "reports": [], "heartbeat_s": 7.5})
        assert agent.heartbeat_s == 7.5
        for bad in (1e9, 0.01, "5", True, None):  # out of bounds, or not a number: kept as it was
            agent._dispatch({"type": P.ACK, "reports": [], "heartbeat_s": bad})
        assert agent.heartbeat_s == 7.5
        sent: list[tuple[str, dict]] = []
        agent._send_now = lambda kind, **fields: sent.append((kind, fields))
        agent.welcomed = True
        agent.send(P.RESULT, invocation_id=1, attempt=1, outcome="ok")
        agent.step_heartbeat()
        # the RESULT first: a heartbeat no longer listing the work must not overtake it
        assert [kind for kind, _ in sent] == [P.RESULT, P.HEARTBEAT] and sent[-1][1]["every"] == 7.5
    finally:
        agent.shutdown()


def test_the_welcome_credential_is_made_off_the_loop(database, monkeypatch):
    """A slow munge encode (a loaded munged) holds up only the WELCOMEs behind it: the
    loop keeps answering, and the node hears nothing before its WELCOME."""
    monkeypatch.setattr(client_mod, "make_credential", lambda digest, socket=None: str(UID))
    release = threading.Event()

    def issue(payload: bytes) -> str:
        if json.loads(payload)["node"] == "slow":
            release.wait(20)
        return "welcome"

    config = Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}", tick_s=0.01, check_code=False)
    d = Coscheduler(config, database, StubSlurm(), verify=lambda cred, digest: int(cred), issue=issue)
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    ctx = zmq.Context()
    try:
        agent = ctx.socket(zmq.DEALER)
        agent.setsockopt(zmq.LINGER, 0)
        agent.connect(config.bind)
        agent.send(P.encode(P.HELLO, node="slow", held=[], nonce="n", cred="0"))  # root: the verify stub
        wait_for(lambda: len(d.welcomes) == 1)  # its credential is being made
        with client_mod.Client(config.bind, timeout_s=10) as c:
            for _ in range(3):
                assert "slow" not in c.agents()  # the loop answers; no session yet
        assert not agent.poll(200)  # nothing reaches the node before its WELCOME
        release.set()
        assert agent.poll(10_000)
        welcome = P.decode(agent.recv_multipart()[0])
        assert (welcome["type"], welcome["cred"]) == (P.WELCOME, "welcome") and "slow" in d.agents
    finally:
        release.set()
        d.stop_requested = True
        loop.join(10)
        ctx.destroy(linger=0)
