"""Interference: a CPU-bound "batch" kernel pinned to the CPUs the job keeps, timed alone
and with functions saturating the lent CPUs, in one run; prints the slowdown ratio.

    .venv/bin/python bench/bench_interference.py [--rounds 5] [--reps 5] [--guests 2]

The guests are real executors started by a real faas-agent: each in its own cgroup
(cpuset = the lent CPU, low CPU weight), running `spin` (a busy loop). The kernel runs in
a separate process pinned (sched_setaffinity) to the kept CPU: a pure-Python arithmetic
loop and, if numpy is there, a STREAM-like triad (memory bandwidth, where co-runners on
other cores still interfere through the shared cache and memory bus). Phases alternate
alone / with guests (A-B-A-B...), so drift from anything else on the machine lands on
both sides. Target: slowdown <= 1.03 (the paper measured LULESH within about 3 %).
No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERNEL = r"""
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
kind = sys.argv[2]
if kind == "cpu":
    t0 = time.perf_counter()
    x = 0
    for i in range(4_000_000):
        x += i * i % 7
    print(time.perf_counter() - t0)
else:
    import numpy as np
    n = 4_000_000
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
    t0 = time.perf_counter()
    for _ in range(20):
        np.add(b, 3.0 * c, out=a)
    print(time.perf_counter() - t0)
"""


BATCH_CGROUP = None  # the "batch job's" cgroup (as Slurm's task/cgroup would make one), if root


def kernel(cpu: int, kind: str) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if BATCH_CGROUP is None:
        out = subprocess.run([sys.executable, "-c", KERNEL, str(cpu), kind], capture_output=True, text=True,
                             env=env, check=True).stdout
    else:
        from faas_runtime.confinement import spawn

        proc = spawn([sys.executable, "-c", KERNEL, str(cpu), kind], env=env, cwd="/", cgroup=BATCH_CGROUP,
                     identity=None, stdout=subprocess.PIPE)
        out = proc.communicate()[0].decode()
    return float(out)


def taskset_control(kept: int, lent: list[int], kinds: list[str], reps: int, guests: int) -> dict:
    """The same kernel beside plain spinners pinned with sched_setaffinity only (no cgroup,
    default CPU weight): what the machine itself does, for comparison."""
    out = {}
    procs = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {set(lent)!r})\nwhile True: pass"])
             for _ in range(guests)]
    try:
        time.sleep(0.3)
        for k in kinds:
            out[k] = statistics.median(kernel(kept, k) for _ in range(reps))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="alone/with alternations")
    ap.add_argument("--reps", type=int, default=5, help="kernel runs per phase")
    ap.add_argument("--guests", type=int, default=2, help="spinning functions on the lent CPU(s)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs at least 2 CPUs (one kept by the batch job, one lent)")
        return 1
    kept, lent = cpus[0], cpus[1:]
    kinds = ["cpu"]
    try:
        import numpy  # noqa: F401

        kinds.append("triad")
    except ImportError:
        pass
    from faas_runtime import protocol as P
    from _local_agent import LocalAgent

    global BATCH_CGROUP
    batch_tree = None
    if os.geteuid() == 0:
        from faas_runtime.confinement import Limits, Subtree

        # The batch job in a cgroup of its own on the kept CPU, at the default weight
        # (Slurm's task/cgroup does this for real jobs); the guests get the agent's low weight.
        batch_tree = Subtree("faas-bench-batch")
        BATCH_CGROUP = batch_tree.create("job", Limits(cpus=(kept,), mem_mb=8192, pids_max=4096, cpu_weight=100))
    la = LocalAgent(grace_s=0.5)
    alone = {k: [] for k in kinds}
    loaded = {k: [] for k in kinds}
    try:
        print(f"kernel pinned to kept CPU {kept}; guests confined to lent CPU(s) {lent}; "
              f"cgroups {'on' if la.agent.subtree else 'off'}")
        for r in range(args.rounds):
            for k in kinds:
                alone[k] += [kernel(kept, k) for _ in range(args.reps)]
            slot = la.lend(100 + r, lent * args.guests)
            invs = [la.run(slot, "runtime_probe:spin", "3600", os_cpus=lent) for _ in range(args.guests)]
            deadline = time.monotonic() + 30
            while sum(1 for k, f in la.sent if k == P.STARTED and f["invocation_id"] in invs) < len(invs):
                la.step(5)
            while time.monotonic() < deadline and not all(
                    ex.cgroup is None or len(ex.cgroup.pids()) for ex in la.agent.executors.values()):
                la.step(5)
            time.sleep(0.3)  # the guests are spinning
            for k in kinds:
                loaded[k] += [kernel(kept, k) for _ in range(args.reps)]
            la.agent.revoke(la.agent.slots[slot], "round over")
            for inv in invs:
                la.wait(inv, timeout_s=30)
        control = taskset_control(kept, lent, kinds, args.reps * 2, args.guests)
        for k in kinds:
            a, w = statistics.median(alone[k]), statistics.median(loaded[k])
            print(f"{k:<6} alone median {a * 1e3:8.1f} ms (n={len(alone[k])}), with {args.guests} guests "
                  f"{w * 1e3:8.1f} ms (n={len(loaded[k])}): slowdown {w / a:.3f}   (target <= 1.03)")
            print(f"{'':<6} control: {args.guests} plain spinners pinned to {lent} without cgroups: "
                  f"{control[k] * 1e3:8.1f} ms, slowdown {control[k] / a:.3f}")
    finally:
        la.close()
        if batch_tree is not None:
            batch_tree.reap_orphans()
            for d in batch_tree.base.values():
                try:
                    d.rmdir()
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
