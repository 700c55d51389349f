"""Hot invocations over libfabric RMA (a lease's calls become one-sided writes into the
executor's memory, polled in C, instead of ZeroMQ messages): the same client API as the
ZeroMQ hot path, selected by configuration. Against the real cluster: identical results over ZeroMQ and RMA
(tcp, shm), revoke during RMA calls -> LeaseEnded, fabric off -> ZeroMQ. With an agent driven
step by step: the RMA attach checks the lease token, the RMA loop runs in the confined
executor process, LEASE_END ends RMA calls, an agent whose fabric is off offers ZeroMQ alone,
and a native (C) function gives the same values and errors on every path (cold run, ZeroMQ
lease, RMA lease answered by the C loop).
"""
import json
import os
import threading

import pytest

from faas_runtime import fabric
from faas_runtime.client import FunctionError, LeaseEnded, lease
from tests.conftest import missing
from tests.functions import native_build

from .helpers import FUNCTIONS, active_slot, lease_for, lease_on_slot, register_runtime_probes, run, sbatch, wait_until
from .runtime_fixtures import harness  # noqa: F401  (fixture)

PROVIDERS = ["tcp", "shm"]
OFF = fabric.FabricConfig("off")


def config(provider: str) -> fabric.FabricConfig:
    return fabric.FabricConfig(provider, "lo" if provider == "tcp" else "")


@pytest.fixture(params=PROVIDERS)
def provider(request):
    if not fabric.available():
        missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")
    try:
        fabric.Endpoint(config(request.param)).close()
    except fabric.FabricError as exc:
        missing(f"provider {request.param} unusable here: {exc}")
    return request.param


def _lease(cluster, name, fab, **kw):
    return lease_for(cluster, name, fabric=fab, **kw)


@pytest.fixture
def rma_functions(client):
    return register_runtime_probes(client, "rma")


def _session(cluster, fab):
    """The same calls, whatever the transport; returns what they gave."""
    out = {}
    with _lease(cluster, "rma-echo", fab) as echo:
        out["transport"] = echo.transport
        out["small"] = echo.call({"a": [1, 2], "s": "é"})
        out["none"] = echo.call(None)
        big = "x" * (1 << 20)  # above the RMA slot: the executor reads it, the client reads the result
        out["big"] = echo.call(big) == big
        out["async"] = [p.result(timeout_s=30) for p in [echo.submit(n) for n in range(20)]]
        out["json_text"] = echo.call_json('{"k": [true, null, 1.5]}')
        out["bytes"] = echo.call(b"\x00\xffraw")  # binary both ways (over RMA: protocol.RMA_BINARY)
        blob = os.urandom(1 << 20)  # and above the slot: read in place
        out["big_bytes"] = echo.call(blob) == blob
    with _lease(cluster, "rma-boom", fab) as boom:
        with pytest.raises(FunctionError) as info:
            boom.call(7)
        out["error"] = str(info.value)
        out["traceback"] = "boom" in (info.value.remote_traceback or "")
    with _lease(cluster, "rma-who", fab) as who:
        v = who.call("hi")
        out["who"] = (v["echo"], v["uid"], set(v["cpus"]) <= set(who.cpus), "slurm-faas-" in v["cgroup"])
    return out


def test_same_calls_same_results_over_zeromq_and_rma(cluster, rma_functions, jobs, provider):
    jobs.append(sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 300"))
    active_slot(rma_functions, jobs[-1], timeout_s=60)
    over_zmq = _session(cluster, OFF)
    over_rma = _session(cluster, config(provider))
    assert over_zmq.pop("transport") == "zmq"
    assert over_rma.pop("transport") == "rma"
    assert over_rma == over_zmq
    assert over_rma["error"] == "RuntimeError: boom 7" and over_rma["traceback"]


def test_rma_runs_in_the_confined_executor_and_checks_the_token(cluster, rma_functions, jobs, provider):
    from faas_runtime.rma import AttachRefused, RmaClient

    jobs.append(sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 300"))
    active_slot(rma_functions, jobs[-1], timeout_s=60)
    with _lease(cluster, "rma-who", config(provider)) as who:
        assert who.transport == "rma" and who.rma["control"].startswith("tcp://")
        over_rma = who.call(1)
        # the same process answers over ZeroMQ: the RMA loop is a thread of the executor
        rma_client, who._rma = who._rma, None
        over_zmq = who.call(2)
        who._rma = rma_client
        assert over_rma["pid"] == over_zmq["pid"] and over_rma["cgroup"] == over_zmq["cgroup"]
        assert "slurm-faas-" in over_rma["cgroup"]
        for attach in ({}, {"token": "not-the-token"}, {"token": None}):  # no token, no attach
            with pytest.raises(AttachRefused) as info:
                RmaClient(who.rma["control"], config(provider), timeout=20, attach=attach)
            assert info.value.code == "lease"
        assert who.call(3)["echo"] == 3


def test_revoke_during_rma_calls_ends_them_with_lease_ended(cluster, rma_functions, jobs, provider):
    job = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=1", "--wrap", "sleep 300")
    jobs.append(job)
    slot_id = active_slot(rma_functions, job, timeout_s=60)["slot_id"]

    held = lease_on_slot(cluster, "rma-sleep", slot_id, fabric=config(provider))
    try:
        assert held.transport == "rma"
        assert held.call(0.05)["job"] == str(job)
        cancel = threading.Timer(1.0, lambda: run(cluster, "scancel", str(job)))
        cancel.start()
        try:
            with pytest.raises(LeaseEnded) as info:
                held.call(60, timeout_s=45)  # in flight over RMA when the job ends
        finally:
            cancel.join()
        assert "revoked" in info.value.reason or "stopped" in info.value.reason
        with pytest.raises(LeaseEnded):
            held.call(0.01, timeout_s=5)
        with pytest.raises(LeaseEnded):
            held.submit(0.01).result(timeout_s=5)
    finally:
        held.release()


def test_fabric_off_stays_on_zeromq(cluster, rma_functions, jobs):
    jobs.append(sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 300"))
    active_slot(rma_functions, jobs[-1], timeout_s=60)
    with _lease(cluster, "rma-echo", OFF) as echo:
        assert echo.transport == "zmq" and echo.rma is None
        assert echo.call({"x": 1}) == {"x": 1}
    old = os.environ.get("FAAS_FABRIC")
    os.environ["FAAS_FABRIC"] = "off"  # the configuration the client reads by default
    try:
        with lease("rma-echo", endpoint=cluster.coscheduler_endpoint, munge_socket=str(cluster.munge_socket)) as e:
            assert e.transport == "zmq" and e.call([1]) == [1]
    finally:
        os.environ.pop("FAAS_FABRIC") if old is None else os.environ.__setitem__("FAAS_FABRIC", old)


# -- an agent driven step by step (real executors, real cgroups), no cluster --------------

def _harness_lease(h, slot, entrypoint, fab, code_dir=FUNCTIONS):
    from faas_runtime import protocol as P
    from faas_runtime.client import HotLease

    lease_id, token = f"t-{os.urandom(3).hex()}", os.urandom(16).hex()
    s = h.agent.slots[slot]
    msg = {"v": P.VERSION, "type": P.LEASE_START, "lease_id": lease_id, "token": token, "slot_id": slot,
           "job_id": s.job_id, "os_cpus": sorted(set(s.record["os_cpus"])), "mem_mb": 128, "uid": 0, "gid": 0,
           "entrypoint": entrypoint, "code_dir": str(code_dir), "image": None, "runtime": None, "duration_s": 600}
    if fab is not None and fab.enabled:
        msg["fabric"] = {"provider": fab.provider, "domain": fab.domain}
    h.agent._dispatch(msg)
    ready = wait_until("LEASE_READY", lambda: h.step() or next(
        (f for k, f in h.sent if k == P.LEASE_READY and f["lease_id"] == lease_id), None), timeout_s=60)
    return lease_id, HotLease(None, lease_id, ready["endpoint"], token, msg["os_cpus"], rma=ready.get("rma"),
                              fabric=fab)


def test_lease_end_ends_rma_calls_and_an_agent_with_fabric_off_offers_zeromq(harness, provider):
    h = harness(cgroups=False)
    slot = h.lend(3, [sorted(os.sched_getaffinity(0))[-1]])
    lease_id, hot = _harness_lease(h, slot, "runtime_probe:echo", config(provider))
    try:
        assert hot.transport == "rma" and hot.call({"a": 1}) == {"a": 1}
        h.agent._lease_end(lease_id, "released by the client")
        # Wait for the end to reach the executor: it tells the hot client LEASE_ENDED (also
        # when the client's first message, its PING, is read after the LEASE_END).
        wait_until("the executor's LEASE_ENDED", lambda: h.step() or hot._pump(0) or hot.ended, timeout_s=30)
        with pytest.raises(LeaseEnded, match="released by the client"):
            hot.call(1, timeout_s=20)
    finally:
        hot.release()
    h.agent.fabric = fabric.FabricConfig("off")
    lease_id, hot = _harness_lease(h, slot, "runtime_probe:echo", config(provider))
    try:
        assert hot.rma is None and hot.transport == "zmq" and hot.call(json.loads("[2]")) == [2]
    finally:
        hot.release()


def test_python_calls_with_large_buffers_through_the_executor(harness, provider):
    """The Python API's RMA data path in the real executor (``slurm_faas.lease``): large
    arguments arrive gathered, in memory of their own that a function may keep across
    calls; large results come back gathered, writable, with nothing left registered."""
    from faas_runtime import pyapi
    from slurm_faas.hot import PythonLease
    from tests.integration.rma_parts_fns import Blob, echo, keep, kept

    h = harness(cgroups=False)
    slot = h.lend(7, [sorted(os.sched_getaffinity(0))[-1]])
    before = fabric.registrations()
    _, hot = _harness_lease(h, slot, pyapi.ENTRYPOINT, config(provider), code_dir=FUNCTIONS.parents[1])
    try:
        assert hot.transport == "rma"
        data = [os.urandom(n) for n in (1 << 20, 3 << 20, 10, 1 << 20)]
        got = [PythonLease(hot, keep, False).call(Blob(bytearray(d))) for d in data]
        assert got == [(1, "memoryview"), (2, "memoryview"), (3, "bytearray"), (4, "memoryview")]  # large: not copied
        assert PythonLease(hot, kept, False).call() == data  # what it kept is intact: its memory was its own
        back = PythonLease(hot, echo, False).call([Blob(bytearray(d)) for d in data])
        assert [bytes(b.data) for b in back] == data
        assert not memoryview(back[0].data).readonly and not memoryview(back[1].data).readonly
    finally:
        hot.release()
    assert fabric.registrations() == before


# -- native (C) functions through the real executor ----------------------------------------

LIB = native_build.LIBRARY


def _native_session(h, slot, fab, native_dir):
    """The same calls on leases of native functions; returns what they gave."""
    out = {}
    lease_id, echo = _harness_lease(h, slot, f"{LIB}:echo", fab, native_dir)
    try:
        out["transport"] = echo.transport
        out["value"] = echo.call({"a": [1, 2.5, None, True], "s": "é"})
        out["text"] = echo.call_json('{"k": [true, null, 1.5]}')  # byte for byte, not re-encoded
        big = "x" * (1 << 20)  # a bulk payload and a bulk result
        out["big"] = echo.call(big) == big
        out["many"] = [echo.call(n) for n in range(200)] == list(range(200))
    finally:
        echo.release()
    lease_id, digest = _harness_lease(h, slot, f"{LIB}:digest", fab, native_dir)
    try:
        texts = ['"abc"', json.dumps(list(range(1000))), json.dumps({"é": "x" * 70000})]
        out["digests"] = [digest.call_json(t) for t in texts]
        assert [json.loads(d) for d in out["digests"]] == [{"len": len(t.encode()), "fnv1a": native_build.fnv1a(t.encode())}
                                                          for t in texts]
    finally:
        digest.release()
    for symbol in ("fail", "garbage", "liar"):
        lease_id, bad = _harness_lease(h, slot, f"{LIB}:{symbol}", fab, native_dir)
        try:
            errors = []
            for payload in (1, "y" * 70000):  # inline (the C loop on RMA) and bulk
                with pytest.raises(FunctionError) as info:
                    bad.call(payload)
                errors.append((str(info.value), info.value.remote_traceback))
            out[symbol] = errors
        finally:
            bad.release()
    return out


def test_native_function_same_values_and_errors_on_every_path(harness, provider, native_dir):
    h = harness(cgroups=False)
    slot = h.lend(5, [sorted(os.sched_getaffinity(0))[-1]])
    # a cold/warm run (the agent's CALL over ZeroMQ)
    inv = h.run(slot, f"{LIB}:digest", '"abc"', code_dir=str(native_dir))
    kind, f = h.outcome(inv)
    assert (kind, f["outcome"]) == (h.P.RESULT, "ok")
    assert json.loads(f["value_json"]) == {"len": 5, "fnv1a": native_build.fnv1a(b'"abc"')}
    kind, f = h.outcome(h.run(slot, f"{LIB}:fail", "1", code_dir=str(native_dir)))
    assert f["outcome"] == "error" and f["error"] == f"NativeFunctionError: {LIB}:fail returned 3: bad input (from C)"
    for entrypoint, text in ((f"{LIB}:no_such_symbol", "has no symbol 'no_such_symbol'"),
                             ("libnope.so:echo", "'libnope.so' not found in the code dir")):
        kind, f = h.outcome(h.run(slot, entrypoint, "1", code_dir=str(native_dir)))
        assert f["outcome"] == "error" and "NativeLoadError" in f["error"] and text in f["error"], f

    over_zmq = _native_session(h, slot, OFF, native_dir)
    over_rma = _native_session(h, slot, config(provider), native_dir)
    assert over_zmq.pop("transport") == "zmq"
    assert over_rma.pop("transport") == "rma"
    liars = over_rma.pop("liar") + over_zmq.pop("liar")  # the room it was given differs by path
    assert all("returned -1: claimed a" in e and "more than the room" in e and tb is None for e, tb in liars)
    assert over_rma == over_zmq
    assert over_rma["value"] == {"a": [1, 2.5, None, True], "s": "é"}
    assert over_rma["text"] == '{"k": [true, null, 1.5]}' and over_rma["big"] and over_rma["many"]
    assert over_rma["fail"] == [(f"NativeFunctionError: {LIB}:fail returned 3: bad input (from C)", None)] * 2
    assert over_rma["garbage"] == [(f"NativeFunctionError: {LIB}:garbage returned a 10-byte result that is not JSON "
                                    "text (a result must be the UTF-8 JSON text of a value)", None)] * 2
