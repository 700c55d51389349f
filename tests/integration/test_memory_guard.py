"""The batch job always wins (issue 18), on the real dev cluster (task/cgroup confines jobs):
its tasks run on the cores it kept while functions run on the lent ones, and when it grows
into the memory its functions hold, the agent's memory guard shrinks the lend (evicting the
functions, which end SUCCEEDED elsewhere) and lends again after the hold-down."""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from faas_runtime.states import TERMINAL

from .helpers import FUNCTIONS, active_slot, job_state, sbatch, wait_until

MEMORY_JOB = Path(__file__).resolve().parent / "memory_job.py"
LONG = 180


def job_events(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]


def test_a_growing_job_gets_its_memory_back_and_the_lend_regrows(cluster, client, jobs):
    tag = secrets.token_hex(4)
    go = cluster.root / "jobs" / f"go-{tag}"
    out = cluster.root / "jobs" / f"memory-{tag}.out"
    # n1: 2 GiB job lending 4 of its 8 cores (OS CPU 1 on this 2-CPU machine) and 1 GiB
    job = sbatch(cluster, "-w", "n1", "-c8", "--mem=2G", "--faas-share=cores=4,mem=1G", f"--output={out}",
                 "--wrap", f"/usr/bin/python3 {MEMORY_JOB} {go} 128 95 6 45")
    jobs.append(job)
    slot = active_slot(client, job)
    assert slot["mem_mb"] == 1024
    client.register(name="mem-hold", entrypoint="memory_probe:hold", code_dir=str(FUNCTIONS), cores=1, mem_mb=256,
                    timeout_s=120, max_attempts=5)
    ids = [client.invoke("mem-hold", json.dumps({"mb": 200, "s": 12})) for _ in range(4)]
    wait_until("the four hold the lent memory of the job",
               lambda: all(client.status(i)["state"] == "RUNNING" and client.status(i)["job_id"] == job
                           for i in ids), timeout_s=LONG, interval_s=0.2)
    # somewhere for the evicted ones to go: another job lending on n2
    other = sbatch(cluster, "-w", "n2", "-c8", "--mem=4G", "--faas-share=cores=4,mem=2G", "--wrap", "sleep 300")
    jobs.append(other)
    active_slot(client, other)
    go.touch()

    wait_until("the growing job ends", lambda: job_state(cluster, job) in ("COMPLETED", "FAILED", "CANCELLED",
                                                                            "OUT_OF_MEMORY", "GONE"),
               timeout_s=LONG, interval_s=0.5)
    assert job_state(cluster, job) in ("COMPLETED", "GONE"), out.read_text()
    events = job_events(out)
    start = next(e for e in events if e["event"] == "start")
    steps = [e for e in events if e["event"] == "step"]
    freed = next(e for e in events if e["event"] == "freed")
    assert events[-1]["event"] == "end"
    # its tasks ran on the cores it kept, and said so
    assert start["bound"] == "1" and start["kept"] == start["cpus"] == "0" and start["omp"] == "1"
    # every step up to 95 % of --mem, inside a real limit it never touched (no reclaim, no OOM)
    assert steps[-1]["total_mb"] == int(2048 * 0.95)
    assert freed["limit"] == 2048 << 20 and freed["failcnt"] == 0, freed
    assert freed["max_usage"] < freed["limit"]

    finals = {i: client.wait(i, timeout_s=LONG) for i in ids}
    assert all(f["state"] == "SUCCEEDED" for f in finals.values()), finals
    evicted = [i for i, f in finals.items() if any(h[0] == "EVICTED" for h in f["history"])]
    assert evicted, "the job grew into their memory: the guard must have evicted some"
    for i in ids:
        assert sum(h[0] == "SUCCEEDED" for h in finals[i]["history"]) == 1  # once
        # evicted once while running at most: a RUN the shrunk lend cannot take is held back
        # unstarted (its attempt given back), never started only to be evicted again
        assert finals[i]["attempts"] <= 2, finals[i]
        value = json.loads(client.result_json(i))
        assert value["cpus"] == [1]  # the lent CPU, never the job's kept CPU 0
    # the agent's record of the lend: shrunk below what the plugin lent, then grown again
    history = json.loads((cluster.root / "agent" / "n1" / "lends" / f"{job}.json").read_text())
    sizes = [h[1] for h in history["history"]]
    assert history["base_mb"] == 1024 and min(sizes) < 1024
    low = sizes.index(min(sizes))
    assert any(s > min(sizes) for s in sizes[low:]), history
    for t, lent, used, job_mem, _why in history["history"]:
        assert used + lent <= job_mem, history  # the rule, margin aside, at every change
    assert all(client.status(i)["state"] in {s.value for s in TERMINAL} for i in ids)
