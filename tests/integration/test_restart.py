"""A daemon killed with SIGKILL is restarted by `up` and picks its work back up."""
import json
import os
import signal

from coscheduler.tools.devcluster import Component

from .helpers import sbatch, wait_until


def _kill(cluster, name: str, program: str) -> None:
    pid = cluster.pid_of(Component(name, program))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(f"{name} gone", lambda: cluster.pid_of(Component(name, program)) is None)


def test_coscheduler_restart_loses_nothing(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    wait_until("slot", lambda: any(s["job_id"] == job and s["state"] == "ACTIVE" for s in probe.slots()))
    ids = [probe.invoke("sleepy", json.dumps(0.5)) for _ in range(6)]
    _kill(cluster, "faas-coscheduler", "coscheduler.daemon")
    cluster.up(timeout_s=60)  # restarts only what is missing
    finals = [probe.wait(i, timeout_s=60) for i in ids]
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * 6
    assert all(f["job_id"] == job for f in finals)


def test_agent_restart_requeues_and_relends(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = wait_until("slot", lambda: next((s for s in probe.slots() if s["job_id"] == job and s["state"] == "ACTIVE"), None))
    node = slot["node"]
    inv = probe.invoke("sleepy", json.dumps(30))
    wait_until("running", lambda: probe.status(inv)["state"] == "RUNNING")
    _kill(cluster, f"faas-agent-{node}", "faas_runtime.agent")
    cluster.up(timeout_s=60)
    # The restarted agent's HELLO says it holds nothing: what the dead one ran is requeued at
    # once (not after the silent-agent grace) and runs again on the re-announced slot.
    wait_until("running again", lambda: probe.status(inv)["attempts"] == 2, timeout_s=30)
    history = [h[0] for h in probe.status(inv)["history"]]
    assert history[:6] == ["QUEUED", "DISPATCHED", "RUNNING", "EVICTED", "QUEUED", "DISPATCHED"]
    quick = probe.invoke("where", json.dumps("after restart"))
    final = probe.wait(quick, timeout_s=30)
    assert final["state"] == "SUCCEEDED" and final["job_id"] == job


def test_kill_9_mid_batch_loses_no_invocation(cluster, probe, jobs):
    """SIGKILL the co-scheduler while a batch is being dispatched and run; after `up`
    every invocation ends SUCCEEDED (at-least-once), none is lost or stuck."""
    import time

    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=4", "--output=/dev/null", "--wrap", "sleep 300")
    jobs.append(job)
    wait_until("slot", lambda: any(s["job_id"] == job and s["state"] == "ACTIVE" for s in probe.slots()))
    ids = probe.invoke_batch("square", [json.dumps({"n": n}) for n in range(60)])
    wait_until("some done", lambda: any(r["state"] == "SUCCEEDED" for r in probe.list(ids=ids, limit=60)),
               timeout_s=60)
    _kill(cluster, "faas-coscheduler", "coscheduler.daemon")
    time.sleep(1.0)  # agents keep finishing work and sending results into the void
    cluster.up(timeout_s=60)
    rows = probe.wait_many(ids, timeout_s=180)
    assert sorted(rows) == sorted(ids)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    for n, inv in enumerate(ids):
        assert json.loads(probe.result_json(inv))["square"] == n * n
