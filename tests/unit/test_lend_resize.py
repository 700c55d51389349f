"""The co-scheduler follows a lend the node's memory guard resized (faas_runtime/memory_watch.py
sends a LEND with the memory new work may take: 0 for the hold-down after a shrink): neither
queued work nor a hot lease is placed beyond it, and both come back when it grows again.
The co-scheduler's loop in process, on SQLite and PostgreSQL (tests/unit/daemon_harness.py)."""
from __future__ import annotations

import pytest

from coscheduler import db as D
from faas_runtime import protocol as P
from faas_runtime.queue_client import RequestError

from .daemon_harness import client, harness_factory, passes_after, wait_for  # noqa: F401  (fixtures)


def _slot_mem(h, slot_id: str) -> int:
    with h.database.session() as s:
        return s.get(D.Slot, slot_id).mem_mb


def _lease(client) -> dict:
    return client.request(P.LEASE, function="echo", duration_s=30)


def test_a_closed_lend_takes_no_work_and_no_lease_until_it_is_offered_again(client):
    h = client.harness
    agent = h.agent("n1", 1, answer=False)  # holds what it runs: its memory stays taken
    agent.send(P.LEND, record={**agent.record, "mem_mb": 0})  # the guard: the job grew, lend closed
    wait_for(lambda: _slot_mem(h, "1@n1") == 0)
    inv = client.invoke("echo", "1")  # 100 MiB
    passes_after(h, 2)
    st = client.status(inv)
    assert st["state"] == "QUEUED" and agent.runs == [] and "too much memory" in st["reason"]
    with pytest.raises(RequestError) as refused:
        _lease(client)
    assert refused.value.code == P.E_NO_CAPACITY

    agent.send(P.LEND, record={**agent.record, "mem_mb": 150})  # the hold-down is over: 150 MiB
    wait_for(lambda: len(agent.runs) == 1)
    assert agent.runs[0]["invocation_id"] == inv
    with pytest.raises(RequestError) as refused:  # 150 - the 100 running: no room for 100 more
        _lease(client)
    assert refused.value.code == P.E_NO_CAPACITY

    agent.send(P.LEND, record=agent.record)  # regrown to what the plugin lent
    wait_for(lambda: _slot_mem(h, "1@n1") == agent.record["mem_mb"])
    assert _lease(client)["state"] == "pending"  # granted: LEASE_START goes to the agent
