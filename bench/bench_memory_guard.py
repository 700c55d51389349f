"""How fast the agent's memory guard gives a growing job its memory back (issue 18).

A real agent in this process (bench/_local_agent.py: real executors in their cgroups), and
a "job": a process in a real cgroup v1 memory group laid out as task/cgroup makes one
(``/sys/fs/cgroup/memory/slurm_bench/uid_0/job_J``, limit ``--job-mb``), which allocates
and touches memory in steps up to 95 % of its limit. The job lends ``--lend-mb``, which
functions hold (``memory_probe:hold``) when the job starts to grow.

Per run it measures:
- **reclaim**: from the moment the job's allocation crosses the point where the rule leaves
  no room for the last function (job memory - margin - one function's memory) to the
  moment every function's memory is free (its executor killed and reaped, its cgroup gone);
- **allocation time**: the job's time to allocate all its steps, in runs with functions
  holding the lent memory and in runs without (interleaved, same process, same machine).

    sudo .venv/bin/python bench/bench_memory_guard.py [--runs 40] [--job-mb 1024] [--lend-mb 512]

Goals (issue 18): reclaim p99 <= 100 ms; allocation time with/without functions <= 1.05.
Root only (cgroups). The agent loop is driven here the way agent.run() drives it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local_agent import LocalAgent  # noqa: E402

from faas_runtime import protocol as P  # noqa: E402
from faas_runtime.memory_watch import GuardConfig  # noqa: E402

CG = Path("/sys/fs/cgroup/memory/slurm_bench/uid_0")

JOB = r"""
import json, sys, time
step_mb, top_mb = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()  # go
blocks, total, t0 = [], 0, time.monotonic()
while total < top_mb:
    n = min(step_mb, top_mb - total)
    b = bytearray(n << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    blocks.append(b)
    total += n
    print(json.dumps({"total": total, "t": time.monotonic()}), flush=True)
print(json.dumps({"done": time.monotonic() - t0}), flush=True)
sys.stdin.readline()  # exit
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def job_cgroup(job_id: int, limit_mb: int) -> Path:
    d = CG / f"job_{job_id}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
    return d


def one_run(la: LocalAgent, job_id: int, args, with_functions: bool) -> dict:
    cg = job_cgroup(job_id, args.job_mb)
    rec = {"version": 1, "state": "lent", "job_id": job_id, "node": "bench", "uid": 0, "gid": 0,
           "slurm_cpus": [1], "os_cpus": [os.cpu_count() - 1], "mem_mb": args.lend_mb, "end_time": 0,
           "job_mem_mb": args.job_mb}
    la.agent._apply_record(rec)
    slot_id = f"{job_id}@bench"
    holders = []
    if with_functions:
        per = args.lend_mb // 2
        for _ in range(2):
            holders.append(la.run(slot_id, "memory_probe:hold", json.dumps({"mb": per - 40, "s": 600}), mem_mb=per))
        # until both hold their memory (their executors' resident sets)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            la.step(1)
            la.agent.step_memory()
            rss = [_rss_mb(ex.proc.pid) for ex in la.agent.executors.values() if ex.slot_id == slot_id]
            if len(rss) == 2 and all(r >= per - 60 for r in rss):
                break
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(args.step_mb), str(int(args.job_mb * 0.95))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    (cg / "cgroup.procs").write_text(str(proc.pid))
    margin = GuardConfig().margin(args.job_mb)
    threshold = args.job_mb - margin - args.lend_mb // 2  # the last function must go
    proc.stdin.write("go\n")
    proc.stdin.flush()
    crossed = freed = None
    os.set_blocking(proc.stdout.fileno(), False)
    buf, alloc_s = "", None
    while alloc_s is None or (with_functions and freed is None):
        la.step(1)
        la.agent.step_memory()
        try:
            buf += proc.stdout.read() or ""
        except (BlockingIOError, TypeError):
            pass
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            msg = json.loads(line)
            if "done" in msg:
                alloc_s = msg["done"]
            elif crossed is None and msg["total"] > threshold:
                crossed = msg["t"]
        if with_functions and freed is None and crossed is not None and \
                not any(ex.slot_id == slot_id for ex in la.agent.executors.values()):
            freed = time.monotonic()
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    proc.wait()
    evicted = [key for key, (kind, _f, _t) in la.agent.unacked.items() if kind == P.EVICTED and key[0] in holders]
    la.agent._apply_record({**rec, "state": "revoked"})
    la.agent.memory_slots.pop(slot_id, None)
    for _ in range(20):
        la.step(1)
    cg.rmdir()
    return {"alloc_s": alloc_s, "reclaim_s": (freed - crossed) if with_functions else None,
            "evicted": len(evicted), "job_failcnt": None}


def _rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="runs with functions (as many without)")
    ap.add_argument("--job-mb", type=int, default=1024)
    ap.add_argument("--lend-mb", type=int, default=512)
    ap.add_argument("--step-mb", type=int, default=32)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root only: the job's memory cgroup and the executors' cgroups")
    la = LocalAgent(cgroup_root=Path("/sys/fs/cgroup"))
    base = 1_000_000 + (os.getpid() % 1000) * 1000
    with_f, without = [], []
    try:
        for i in range(args.runs):
            with_f.append(one_run(la, base + 2 * i, args, True))
            without.append(one_run(la, base + 2 * i + 1, args, False))
    finally:
        la.close()
    reclaim = [r["reclaim_s"] * 1000 for r in with_f]
    a_with = statistics.median(r["alloc_s"] for r in with_f)
    a_without = statistics.median(r["alloc_s"] for r in without)
    print(f"runs: {args.runs} with functions, {args.runs} without; job {args.job_mb} MiB, lend {args.lend_mb} MiB, "
          f"steps of {args.step_mb} MiB to 95 %")
    print(f"reclaim (threshold crossed -> functions' memory free): p50 {pct(reclaim, 50):.1f} ms, "
          f"p99 {pct(reclaim, 99):.1f} ms, max {max(reclaim):.1f} ms")
    print(f"evicted per run: {statistics.mean(r['evicted'] for r in with_f):.1f}")
    print(f"job allocation time, median: with functions {a_with * 1000:.1f} ms, without {a_without * 1000:.1f} ms, "
          f"ratio {a_with / a_without:.3f}")


if __name__ == "__main__":
    main()
