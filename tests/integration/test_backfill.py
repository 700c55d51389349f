"""Functions backfilled onto the spare cores of a real batch job, and taken back at scancel."""
import json
from datetime import datetime

from faas_runtime.states import State

from .helpers import active_slot, job_state, run, sbatch, wait_until


def test_twenty_invocations_run_on_the_lent_cpus(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--mem=8G", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = active_slot(probe, job)
    assert slot["slurm_cpus"] == [6, 7]
    ids = [probe.invoke("square", json.dumps({"n": n})) for n in range(20)]
    finals = [probe.wait(i, timeout_s=60) for i in ids]
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * 20
    lent_os = set(slot["os_cpus"])
    for n, (inv_id, final) in enumerate(zip(ids, finals)):
        value = json.loads(probe.result_json(inv_id))
        assert value["square"] == n * n
        assert final["job_id"] == job and final["node"] == slot["node"]
        assert set(final["slurm_cpus"]) <= set(slot["slurm_cpus"])
        # what the function itself saw: pinned to the OS CPUs its lent cores map to
        assert set(value["cpus"]) == set(final["os_cpus"]) and set(value["cpus"]) <= lent_os
    assert job_state(cluster, job) == "RUNNING"  # the batch job is untouched


def test_scancel_revokes_and_new_work_waits_for_another_lend(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = active_slot(probe, job)
    run(cluster, "scancel", str(job))
    # How fast the revoke lands is bench/'s business; here only that it does.
    wait_until("slot revoked", lambda: any(s["slot_id"] == slot["slot_id"] and s["state"] == "REVOKED"
                                           for s in probe.slots()), timeout_s=30)
    inv = probe.invoke("where", json.dumps("late"))
    other = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=1", "--wrap", "sleep 60")
    jobs.append(other)
    final = probe.wait(inv, timeout_s=60)
    # It waited for the new lend: its one attempt ran there, never on the revoked slot.
    assert final["state"] == "SUCCEEDED" and final["attempts"] == 1
    assert final["job_id"] == other
    assert [h[0] for h in final["history"]] == ["QUEUED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    assert json.loads(probe.result_json(inv))["echo"] == "late"


def test_eviction_requeues_running_work(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    active_slot(probe, job)
    inv = probe.invoke("sleepy", json.dumps(3))
    wait_until("running", lambda: probe.status(inv)["state"] == State.RUNNING.value)
    run(cluster, "scancel", str(job))
    wait_until("requeued", lambda: probe.status(inv)["state"] == State.QUEUED.value, timeout_s=30)
    other = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 60")
    jobs.append(other)
    final = probe.wait(inv, timeout_s=30)
    assert final["state"] == "SUCCEEDED" and final["job_id"] == other and final["attempts"] == 2
    states = [h[0] for h in final["history"]]
    assert states.count("EVICTED") == 1 and states.count("SUCCEEDED") == 1


def test_function_errors_are_reported(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 60")
    jobs.append(job)
    active_slot(probe, job)
    final = probe.wait(probe.invoke("boom", json.dumps(1)), timeout_s=30)
    assert final["state"] == "FAILED"
    assert "RuntimeError: boom 1" in final["error"]


def _executor_pids(job_id: int) -> list[int]:
    """Executor processes on the slot of one job, found by the environment the agent gives them."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if b"faas_runtime.executor" in (proc / "cmdline").read_bytes() and \
                    f"SLURM_FAAS_JOB_ID={job_id}\0".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def test_slurm_reconciliation_revokes_when_the_plugin_revoke_never_arrives(cluster, probe, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = active_slot(probe, job)
    inv = probe.invoke("sleepy", json.dumps(60))
    wait_until("running", lambda: probe.status(inv)["state"] == State.RUNNING.value)
    assert _executor_pids(job)
    # Lose the lend record: the plugin's revoke at job end has nothing to mark.
    (cluster.spool / slot["node"] / f"{job}.json").unlink()
    run(cluster, "scancel", str(job))
    wait_until("revoked through squeue", lambda: any(
        s["slot_id"] == slot["slot_id"] and s["state"] == "REVOKED" and "in Slurm" in (s["revoke_reason"] or "")
        for s in probe.slots()), timeout_s=15)
    assert probe.status(inv)["state"] == State.QUEUED.value
    wait_until("executor stopped", lambda: not _executor_pids(job), timeout_s=10)
    assert probe.status(inv)["state"] == State.QUEUED.value


def test_short_invocations_are_dispatched_ahead_and_a_scancel_requeues_what_waits(cluster, probe, jobs):
    """A few hundred quick calls on two lent cores: once the co-scheduler knows the function
    is short, it dispatches ahead (a core's next invocation is sent while the core is still
    busy and starts there when it frees); a scancel then requeues what waits at the agent
    and nothing is lost."""
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    slot = active_slot(probe, job)
    ids = probe.invoke_batch("where", [json.dumps(n) for n in range(300)])
    rows = probe.wait_many(ids, timeout_s=120)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    # On each core, at least one invocation was dispatched before the one ahead of it on the
    # same core had ended: the event order in the database shows it waited at the agent.
    history = {i: probe.status(i) for i in ids}
    ahead = 0
    by_core: dict[tuple, list] = {}
    for inv_id in ids:
        st = history[inv_id]
        at = {state: datetime.fromisoformat(t) for state, t, _ in st["history"]}
        by_core.setdefault(tuple(st["slurm_cpus"]), []).append((at["RUNNING"], at["DISPATCHED"], at["SUCCEEDED"]))
        assert set(st["slurm_cpus"]) <= set(slot["slurm_cpus"])
    for runs in by_core.values():
        runs.sort()
        ahead += sum(1 for prev, nxt in zip(runs, runs[1:]) if nxt[1] < prev[2])
    assert ahead > 0
    # Now a batch that cannot finish before the scancel: what waits is requeued, not lost.
    slow = probe.invoke_batch("where", [json.dumps(n) for n in range(2000)])
    wait_until("some done", lambda: any(r["state"] == "SUCCEEDED" for r in probe.list(ids=slow[:50], limit=50)))
    run(cluster, "scancel", str(job))
    wait_until("slot revoked", lambda: any(s["slot_id"] == slot["slot_id"] and s["state"] == "REVOKED"
                                           for s in probe.slots()), timeout_s=30)

    def tally() -> dict[str, int]:
        states: dict[str, int] = {}
        for start in range(0, len(slow), 500):
            for r in probe.list(ids=slow[start:start + 500], limit=500):
                states[r["state"]] = states.get(r["state"], 0) + 1
        return states

    # Every one either done or back in the queue (reports of the last runs may still arrive).
    states = wait_until("nothing left on the revoked slot", lambda: (
        lambda st: st if set(st) <= {"SUCCEEDED", "QUEUED"} else None)(tally()), timeout_s=30, interval_s=0.5)
    assert sum(states.values()) == len(slow), states
    assert states.get("QUEUED", 0) > 0
    assert probe.cancel_function("where") == states["QUEUED"]  # leave the shared queue empty
