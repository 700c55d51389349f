"""Memory leases in the co-scheduler (coscheduler/leases.py, ``kind="memory"``): remote memory
needs RMA, is placed on a lend with the size (+ the server's overhead) free and one free core,
holds that memory from queued work and other leases until released, and a closed lend takes
none. The co-scheduler's loop in process (tests/unit/daemon_harness.py); the agent's and the
server's side run in tests/integration/test_remote_memory_lease.py."""
from __future__ import annotations

import pytest

from coscheduler import db as D
from coscheduler.leases import MEMORY_OVERHEAD_MB
from faas_runtime import protocol as P
from faas_runtime.queue_client import RequestError

from .daemon_harness import client, harness_factory, passes_after, wait_for  # noqa: F401  (fixtures)

MIB = 1 << 20
TCP = {"provider": "tcp", "domain": ""}


def _slot_mem(h, slot_id: str) -> int:
    with h.database.session() as s:
        return s.get(D.Slot, slot_id).mem_mb


def _memory(client, mib: int, **kw) -> dict:
    return client.request(P.LEASE, kind="memory", size_bytes=mib * MIB, duration_s=30, **{"fabric": TCP, **kw})


def _refused(client, mib: int, **kw) -> str:
    with pytest.raises(RequestError) as refused:
        _memory(client, mib, **kw)
    return refused.value.code


def test_memory_leases_need_rma_and_a_size(client):
    client.harness.agent("n1", 1)
    assert _refused(client, 64, fabric=None) == P.E_INVALID
    assert _refused(client, 0) == P.E_INVALID
    with pytest.raises(RequestError) as refused:
        client.request(P.LEASE, kind="disk", size_bytes=MIB, fabric=TCP)
    assert refused.value.code == P.E_INVALID


def test_a_memory_lease_holds_its_memory_and_one_core_until_released(client):
    h = client.harness
    agent = h.agent("n1", 1, answer=False)
    agent.send(P.LEND, record={**agent.record, "mem_mb": 800})
    wait_for(lambda: _slot_mem(h, "1@n1") == 800)
    first = _memory(client, 600)
    lease = h.daemon.leases.leases[first["lease_id"]]
    assert (lease.kind, lease.size_bytes, lease.mem_mb, len(lease.slurm_cpus)) == \
        ("memory", 600 * MIB, 600 + MEMORY_OVERHEAD_MB, 1)
    st = client.request(P.LEASE_STATUS, lease_id=first["lease_id"])
    assert st["kind"] == "memory" and st["size_bytes"] == 600 * MIB and st["state"] == "pending"

    # the lend's other 72 MiB hold neither a second lease nor a 100 MiB invocation
    assert _refused(client, 100) == P.E_NO_CAPACITY
    inv = client.invoke("echo", "1")
    passes_after(h, 2)
    assert client.status(inv)["state"] == "QUEUED" and agent.runs == []

    client.request(P.LEASE_RELEASE, lease_id=first["lease_id"])  # given back: the invocation runs
    wait_for(lambda: len(agent.runs) == 1)
    assert _memory(client, 500)["state"] == "pending"  # 800 - the running 100 MiB: 628 fit


def test_a_closed_lend_takes_no_memory_lease(client):
    h = client.harness
    agent = h.agent("n1", 1)
    agent.send(P.LEND, record={**agent.record, "mem_mb": 0})  # the memory guard closed it
    passes_after(h, 1)
    wait_for(lambda: _refused(client, 16) == P.E_NO_CAPACITY)
    agent.send(P.LEND, record=agent.record)
    wait_for(lambda: _try(client))


def _try(client) -> bool:
    try:
        return _memory(client, 16)["state"] == "pending"
    except RequestError:
        return False
