"""The placement policies through the co-scheduler's real loop (agents played by ZeroMQ
sockets, tests/unit/daemon_harness.py): what each user observes is which invocations the
agent is told to RUN. Fair-share weights, per-user running quotas, priority classes, the
lend's end (the job's end minus ``until``), and dispatch grace. The same policies on the
real dev cluster: tests/integration/test_policy.py."""
from __future__ import annotations

import json
import time

import pytest

from coscheduler.config import UserQuota
from faas_runtime import queue_client as client_mod

from .daemon_harness import FakeAgent, Harness, harness_factory, passes_after, wait_for  # noqa: F401  (fixture)

ALICE, BOB = 5001, 5002


@pytest.fixture
def as_uid(harness_factory, monkeypatch):
    """``make(**config)`` -> (harness, {uid: client}): each client's credential proves its uid
    (the stub verifier takes the credential's text as the uid; munge is tested elsewhere)."""
    monkeypatch.setattr(client_mod, "make_credential", lambda digest, socket=None: socket)
    opened: list[client_mod.Client] = []

    def make(**cfg):
        h = harness_factory(**cfg)
        clients = {}
        for uid in (ALICE, BOB):
            c = client_mod.Client(h.endpoint, str(uid), timeout_s=20)
            opened.append(c)
            c.register(name="work", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=10)
            clients[uid] = c
        return h, clients

    yield make
    for c in opened:
        c.close()


def _runs_by_uid(agent: FakeAgent) -> dict[int, int]:
    out: dict[int, int] = {}
    for run in agent.runs:
        out[run["uid"]] = out.get(run["uid"], 0) + 1
    return out


def _settled(h: Harness, agent: FakeAgent, n: int) -> dict[int, int]:
    """Wait for ``n`` RUNs, then for two more scheduling passes (nothing else was placeable)."""
    wait_for(lambda: len(agent.runs) >= n)
    passes_after(h, 2)
    return _runs_by_uid(agent)


def test_fair_share_weights_split_the_lent_cores(as_uid):
    h, c = as_uid(shares={ALICE: 3.0, BOB: 1.0})
    for uid in (ALICE, BOB):
        c[uid].invoke_batch("work", ["1"] * 8)
    agent = h.agent(cores=4, answer=False)  # starts what it gets and never finishes it
    assert _settled(h, agent, 4) == {ALICE: 3, BOB: 1}


def test_equal_shares_split_evenly(as_uid):
    h, c = as_uid()
    for uid in (ALICE, BOB):
        c[uid].invoke_batch("work", ["1"] * 8)
    agent = h.agent(cores=4, answer=False)
    assert _settled(h, agent, 4) == {ALICE: 2, BOB: 2}


def test_a_per_user_running_quota_overrides_the_default(as_uid):
    h, c = as_uid(max_running=1, user_quotas={BOB: UserQuota(max_running=3)})
    for uid in (ALICE, BOB):
        c[uid].invoke_batch("work", ["1"] * 8)
    agent = h.agent(cores=6, answer=False)
    assert _settled(h, agent, 4) == {ALICE: 1, BOB: 3}
    assert len(agent.runs) == 4  # two cores stay free: both users are at their quota


def test_a_higher_priority_class_takes_the_cores_first(as_uid):
    h, c = as_uid()
    early = c[ALICE].invoke_batch("work", ["1"] * 4)  # queued first, class 0
    urgent = c[BOB].invoke_batch("work", ["1"] * 4, priority=5)
    agent = h.agent(cores=2, answer=False)
    assert _settled(h, agent, 2) == {BOB: 2}
    assert [r["invocation_id"] for r in agent.runs] == urgent[:2]  # FIFO inside the class
    assert {c[ALICE].status(i)["state"] for i in early} == {"QUEUED"}


@pytest.mark.parametrize("until_min,long_runs", [(8, False), (0, True)])
def test_never_dispatched_when_it_cannot_finish_before_the_lend_ends(as_uid, until_min, long_runs):
    """The job ends in 10 min; with until=8 the lend ends in 2: a function with a 5 min
    timeout must wait for another lend, one with 1 min runs now."""
    h, c = as_uid()
    alice = c[ALICE]
    alice.register(name="long", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=300)
    alice.register(name="short", entrypoint="m:f", code_dir="/tmp", cores=1, mem_mb=100, timeout_s=60)
    long_inv = alice.invoke("long", "1")
    short_inv = alice.invoke("short", "1")
    agent = h.agent(cores=4, answer=False, lend={"end_time": time.time() + 600, "until_min": until_min})
    _settled(h, agent, 2 if long_runs else 1)
    ran = sorted(r["invocation_id"] for r in agent.runs)
    assert ran == (sorted([long_inv, short_inv]) if long_runs else [short_inv])
    assert alice.status(long_inv)["state"] == ("RUNNING" if long_runs else "QUEUED")


def test_a_lend_that_has_ended_gets_nothing(as_uid):
    h, c = as_uid()
    inv = c[ALICE].invoke("work", "1")
    agent = h.agent(cores=2, lend={"end_time": time.time() + 60, "until_min": 1})
    passes_after(h, 2)
    assert agent.runs == [] and c[ALICE].status(inv)["state"] == "QUEUED"


def test_dispatched_work_the_agent_never_reports_is_requeued_after_the_grace(as_uid):
    h, c = as_uid(dispatch_grace_s=3.0)  # not tight: a loaded loop may be slow to read STARTED
    agent = h.agent(cores=1)
    agent.drop = 1  # the first RUN is lost on the way: never started, not in a heartbeat
    inv = c[ALICE].invoke("work", json.dumps("again"))
    final = c[ALICE].wait(inv, timeout_s=60)
    assert final["state"] == "SUCCEEDED" and final["attempts"] == 2
    assert [r["attempt"] for r in agent.runs] == [1, 2]
    assert [e[0] for e in final["history"]] == ["QUEUED", "DISPATCHED", "EVICTED", "QUEUED", "DISPATCHED",
                                                 "RUNNING", "SUCCEEDED"]
    assert "does not run it" in final["history"][2][2]
