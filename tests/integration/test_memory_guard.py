"""The batch job always wins (issue 18), on the real dev cluster (task/cgroup confines jobs):
its tasks run on the cores it kept while functions run on the lent ones, and when it grows
into the memory its functions hold, the agent's memory guard shrinks the lend (evicting the
functions, which end SUCCEEDED once on another job's lend; nothing new is placed on the
shrunk one) and lends again after the hold-down. Hot leases on the lend are ended with a
typed error to their clients, and none is granted there until it regrew."""
from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from pathlib import Path

import pytest

from faas_runtime.client import LeaseEnded, LeaseUnavailable
from faas_runtime.states import TERMINAL

from .helpers import FUNCTIONS, active_slot, job_state, lease_for, lease_on_slot, sbatch, wait_until

MEMORY_JOB = Path(__file__).resolve().parent / "memory_job.py"
LONG = 180
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "OUT_OF_MEMORY", "GONE")


def job_events(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]


def growing_job(cluster, tag: str, hold_s: int, linger_s: int) -> tuple[int, Path, Path]:
    """n1: a 2 GiB job lending 4 of its 8 cores (OS CPU 1 on this 2-CPU machine) and 1 GiB;
    once ``go`` exists it allocates in 128 MiB steps up to 95 % of its memory, holds it for
    ``hold_s``, frees it and lingers ``linger_s`` (tests/integration/memory_job.py)."""
    go = cluster.root / "jobs" / f"go-{tag}"
    out = cluster.root / "jobs" / f"memory-{tag}.out"
    job = sbatch(cluster, "-w", "n1", "-c8", "--mem=2G", "--faas-share=cores=4,mem=1G", f"--output={out}", "--wrap",
                 f"/usr/bin/python3 {MEMORY_JOB} {go} 128 95 {hold_s} {linger_s}")
    return job, go, out


def lend_history(cluster, job: int) -> dict:
    """The agent's record of the lend: [unix time, lent MiB, job usage MiB, job memory MiB, why]."""
    return json.loads((cluster.root / "agent" / "n1" / "lends" / f"{job}.json").read_text())


def placements(history: list) -> list[tuple[str, float, str]]:
    """(slot id, unix time, what became of that attempt) for each dispatch in a status history."""
    out = []
    for i, (state, at, reason) in enumerate(history):
        if state == "DISPATCHED":
            after = next((h[0] for h in history[i + 1:] if h[0] not in ("RUNNING",)), "DISPATCHED")
            out.append((reason.split()[1], dt.datetime.fromisoformat(at).timestamp(), after))
    return out


def test_a_growing_job_gets_its_memory_back_and_the_lend_regrows(cluster, client, jobs):
    job, go, out = growing_job(cluster, secrets.token_hex(4), 6, 45)
    jobs.append(job)
    slot = active_slot(client, job)
    slot_id = slot["slot_id"]
    assert slot["mem_mb"] == 1024
    client.register(name="mem-hold", entrypoint="memory_probe:hold", code_dir=str(FUNCTIONS), cores=1, mem_mb=256,
                    timeout_s=120, max_attempts=5)
    ids = [client.invoke("mem-hold", json.dumps({"mb": 200, "s": 12})) for _ in range(4)]
    wait_until("the four hold the lent memory of the job",
               lambda: all(client.status(i)["state"] == "RUNNING" and client.status(i)["job_id"] == job
                           for i in ids), timeout_s=LONG, interval_s=0.2)
    # somewhere for the evicted ones to go: another job lending on n2, with cores to spare
    other = sbatch(cluster, "-w", "n2", "-c8", "--mem=4G", "--faas-share=cores=6,mem=2G", "--wrap", "sleep 300")
    jobs.append(other)
    active_slot(client, other)
    go.touch()

    # The co-scheduler's record of the lend, while the job runs: it shrinks, and new work
    # submitted then goes elsewhere, never onto the shrunk lend.
    seen: list[tuple[float, int]] = []  # (unix time, the slot's mem_mb at the co-scheduler)
    later: list[int] = []
    deadline = time.monotonic() + LONG
    while job_state(cluster, job) not in ENDED:
        assert time.monotonic() < deadline, "the growing job did not end"
        mem = next((s["mem_mb"] for s in client.slots() if s["slot_id"] == slot_id and s["state"] == "ACTIVE"), None)
        if mem is not None:
            seen.append((time.time(), mem))
        if mem is not None and mem < 1024 and not later:
            later = [client.invoke("mem-hold", json.dumps({"mb": 50, "s": 1})) for _ in range(2)]
        time.sleep(0.3)
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

    # the agent's record of the lend: shrunk below what the plugin lent, then grown again
    # after the hold-down, and the rule held, margin aside, at every change
    history = lend_history(cluster, job)
    sizes = [h[1] for h in history["history"]]
    assert history["base_mb"] == 1024 and min(sizes) < 1024
    low = sizes.index(min(sizes))
    assert any(s > min(sizes) for s in sizes[low:]), history
    for _t, lent, used, job_mem, _why in history["history"]:
        assert used + lent <= job_mem, history
    shrunk_at = next(h[0] for h in history["history"] if h[1] < 1024)
    regrown_at = next(h[0] for h in history["history"][low:] if h[1] > min(sizes))
    assert regrown_at - shrunk_at >= 10  # the hold-down (--memory-hold-down 10)
    # ... and the co-scheduler's: the lend as the plugin wrote it, closed (0 MiB: no new work)
    # while the job grew, then back to what the plugin lent
    mems = [m for _, m in seen]
    assert 0 in mems and mems[-1] == 1024, seen
    assert later, "new work was submitted while the lend was shrunk"

    finals = {i: client.wait(i, timeout_s=LONG) for i in ids + later}
    assert all(f["state"] == "SUCCEEDED" for f in finals.values()), finals
    evicted = [i for i in ids if any(h[0] == "EVICTED" for h in finals[i]["history"])]
    assert evicted, "the job grew into their memory: the guard must have evicted some"
    for i, final in finals.items():
        assert sum(h[0] == "SUCCEEDED" for h in final["history"]) == 1  # once
        value = json.loads(client.result_json(i))
        assert set(value["cpus"]) <= set(final["os_cpus"]), (value, final)  # the lent CPUs it was given
        if final["job_id"] == job:
            assert value["cpus"] == [1]  # the growing job's lent CPU, never its kept CPU 0
        where = placements(final["history"])
        # never placed on the shrunk lend: from the first shrink until it grew again, no
        # dispatch there (not even one the agent would have held back and handed back)
        assert not [p for p in where if p[0] == slot_id and shrunk_at <= p[1] <= regrown_at], (where, history)
        if i in evicted:
            # evicted from the growing job's lend, it ended SUCCEEDED once, elsewhere: on n2
            assert [p[2] for p in where if p[0] == slot_id] == ["EVICTED"], where
            assert where[-1][0] != slot_id and where[-1][2] == "SUCCEEDED", where
            assert final["job_id"] == other and final["node"] == "n2", final
            assert final["attempts"] == 2, final  # evicted once while running, never again
            assert "shrank" in next(h[2] for h in final["history"] if h[0] == "EVICTED")
    for i in later:  # submitted while the lend was shrunk: straight to the other job
        assert {p[0] for p in placements(finals[i]["history"])} == {f"{other}@n2"}, finals[i]
    assert all(client.status(i)["state"] in {s.value for s in TERMINAL} for i in ids)


def test_a_shrunk_lend_takes_no_lease_and_the_leases_it_ended_say_so(cluster, client, jobs):
    """Hot leases and the memory guard: leases hold the lend's memory (2 x 512 MiB of 1 GiB);
    the job grows and the guard ends them (newest first); each client's next call raises
    LeaseEnded with the reason, one that had called (the executor told it) and one that never
    had (the co-scheduler tells it). While the lend is shrunk no lease is granted on it; once it
    regrew after the hold-down, one is again."""
    job, go, out = growing_job(cluster, secrets.token_hex(4), 8, 40)
    jobs.append(job)
    slot_id = active_slot(client, job)["slot_id"]
    client.register(name="mem-lease", entrypoint="runtime_probe:echo", code_dir=str(FUNCTIONS), cores=1,
                    mem_mb=512, timeout_s=30)
    called = lease_on_slot(cluster, "mem-lease", slot_id)
    silent = lease_on_slot(cluster, "mem-lease", slot_id)
    try:
        assert called.call("before") == "before"
        go.touch()
        # the job at 95 % of its memory: the guard took the whole lend back, both leases with it
        wait_until("the lend shrunk to nothing", lambda: (cluster.root / "agent" / "n1" / "lends" / f"{job}.json")
                   .exists() and any(h[1] == 0 for h in lend_history(cluster, job)["history"]),
                   timeout_s=LONG, interval_s=0.2)
        with pytest.raises(LeaseEnded) as ended:
            called.call("after", timeout_s=10)
        assert "shrank" in ended.value.reason and "the job needs its memory" in ended.value.reason
        with pytest.raises(LeaseEnded) as ended:  # its executor never knew this client
            silent.call("after", timeout_s=3)
        assert "shrank" in ended.value.reason
        # shrunk (closed, then too small): no lease here; one elsewhere at most
        try:
            other = lease_for(cluster, "mem-lease", duration_s=30, timeout_s=5)
        except LeaseUnavailable as exc:
            assert "no lent capacity" in str(exc) or "the job needs its memory" in str(exc)
        else:
            assert other.slot_id != slot_id
            other.release()
        assert next(s["mem_mb"] for s in client.slots() if s["slot_id"] == slot_id) < 512
    finally:
        called.release()
        silent.release()
    # the job frees its memory; after the hold-down the lend takes a lease again
    again = lease_on_slot(cluster, "mem-lease", slot_id)
    try:
        assert again.call("regrown") == "regrown"
        history = lend_history(cluster, job)["history"]
        assert history[-1][1] >= 512 and min(h[1] for h in history) < 512
    finally:
        again.release()
