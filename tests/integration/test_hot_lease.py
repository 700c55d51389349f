"""Hot invocations against the real cluster: lease an executor, call it directly, lose it
cleanly when the batch job that lent its cores is cancelled."""
import json

import pytest

from faas_runtime.client import CallTimeout, FunctionError, LeaseEnded, LeaseUnavailable

from .helpers import active_slot, lease_for, lease_on_slot, register_runtime_probes, run, sbatch


@pytest.fixture
def hot_functions(client):
    return register_runtime_probes(client, "hot")


def test_hot_calls_sync_async_timeouts_and_errors(cluster, hot_functions, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = active_slot(hot_functions, job)
    with lease_for(cluster, "hot-who") as who:
        v = who.call("hi")
        assert v["echo"] == "hi" and set(v["cpus"]) <= set(slot["os_cpus"]) and v["cpus"] == who.cpus
        pid = v["pid"]
        assert who.call(None)["pid"] == pid  # the same warm executor answers every call
    with lease_for(cluster, "hot-echo") as echo:
        assert echo.call({"a": [1, 2]}) == {"a": [1, 2]}
        big = "x" * (1 << 20)
        assert echo.call(big) == big
        pending = [echo.submit(n) for n in range(20)]  # async: all sent before any is read
        assert [p.result(timeout_s=10) for p in reversed(pending)] == list(reversed(range(20)))
    with lease_for(cluster, "hot-sleep") as sleeper:
        with pytest.raises(CallTimeout):
            sleeper.call(2, timeout_s=0.3)
        assert sleeper.call(0.1)["slept"] == 0.1  # the late reply of the timed-out call is skipped
    with lease_for(cluster, "hot-boom") as boom:
        with pytest.raises(FunctionError, match="RuntimeError: boom 7"):
            boom.call(7)
    with pytest.raises(LeaseUnavailable, match="no function"):
        lease_for(cluster, "no-such-function")


def test_a_lease_holds_its_cores_and_ends_with_a_typed_error_on_revoke(cluster, hot_functions, jobs):
    job = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=1", "--wrap", "sleep 120")
    jobs.append(job)
    slot_id = active_slot(hot_functions, job)["slot_id"]

    held = lease_on_slot(cluster, "hot-sleep", slot_id)
    try:
        # the job's only lent core is leased: neither queued work nor a second lease gets it
        # (other tests' jobs may still lend elsewhere for a moment: only this slot is checked)
        inv = hot_functions.invoke("hot-echo", json.dumps("queued"))
        try:
            second = lease_for(cluster, "hot-echo", timeout_s=5)
        except LeaseUnavailable as exc:
            assert "no lent capacity" in str(exc)
        else:
            assert second.slot_id != held.slot_id
            second.release()
        assert held.call(0.05)["job"] == str(job)
        in_flight = held.submit(30)
        run(cluster, "scancel", str(job))
        with pytest.raises(LeaseEnded) as info:
            in_flight.result(timeout_s=60)
        assert "revoked" in info.value.reason or "stopped" in info.value.reason
        with pytest.raises(LeaseEnded):
            held.call(0.01, timeout_s=5)
    finally:
        held.release()
    # capacity freed; the queued invocation runs once another job lends
    other = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=1", "--wrap", "sleep 60")
    jobs.append(other)
    final = hot_functions.wait(inv, timeout_s=60)
    # it never ran on the leased core: its one attempt ran elsewhere
    assert final["state"] == "SUCCEEDED" and final["job_id"] != job and final["attempts"] == 1
