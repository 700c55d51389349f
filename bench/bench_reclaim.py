"""Reclaim latency: batch job end (scancel) -> every function process on its lent CPUs gone.

Runs against a real dev cluster (started in a temporary directory unless --dir names a
running one). Each run: a batch job lends 4 cores on n1; a long function invocation runs
on them (a warm executor, pinned to the lent CPUs, started by the node agent); then
``scancel`` and a 1 ms poll of /proc until no process with that job's
SLURM_FAAS_JOB_ID remains. Beside it, in the same run, the round trip of an "empty"
scancel (a held job: no step, no plugin, no agent) is timed: the floor Slurm itself sets.

    .venv/bin/python bench/bench_reclaim.py --runs 20

Prints p50/p99 of both; the target is reclaim p99 <= 100 ms on the 2-CPU dev machine.
Nothing here asserts: the figures are for reading.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faas_runtime.queue_client import Client  # noqa: E402
from coscheduler.tools.devcluster import DevCluster  # noqa: E402

FUNCTIONS = ROOT / "tests" / "functions"


def sh(cluster, *argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, env=cluster.client_env(), check=True,
                          timeout=60).stdout


def wait(what: str, check, timeout_s: float = 60.0, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise SystemExit(f"timed out waiting for {what}")


def function_pids(job_id: int) -> list[int]:
    needle = f"SLURM_FAAS_JOB_ID={job_id}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    with open(f"/proc/{entry.name}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def one_run(cluster, client) -> tuple[float, float]:
    job = int(sh(cluster, "sbatch", "--parsable", "-w", "n1", "-c8", "--faas-share=cores=4", "-o", "/dev/null",
                 "--wrap", "sleep 600").split(";")[0])
    try:
        inv = client.invoke("sleepy", "600")
        wait("the function running on the lent CPUs", lambda: function_pids(job), timeout_s=60)
        wait("invocation RUNNING", lambda: client.status(inv).get("state") == "RUNNING", timeout_s=60)
        t0 = time.monotonic()
        sh(cluster, "scancel", str(job))
        wait("function processes gone", lambda: not function_pids(job), timeout_s=30, interval_s=0.001)
        reclaim = time.monotonic() - t0
    finally:
        subprocess.run(["scancel", str(job)], env=cluster.client_env(), capture_output=True)
    held = int(sh(cluster, "sbatch", "--parsable", "-H", "-o", "/dev/null", "--wrap", "true").split(";")[0])
    t0 = time.monotonic()
    sh(cluster, "scancel", str(held))
    empty = time.monotonic() - t0
    return reclaim, empty


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None, help="a running dev cluster to use (default: a fresh one)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="faas-bench-reclaim-"))
    cluster = DevCluster(root)
    fresh = args.dir is None
    if fresh:
        print(f"starting a dev cluster in {root} ...", flush=True)
        cluster.up(timeout_s=120)
    try:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=20) as client:
            client.register(name="sleepy", entrypoint="probe:sleepy", code_dir=str(FUNCTIONS), cores=1, mem_mb=128,
                            timeout_s=900, max_attempts=1)
            reclaim, empty = [], []
            for i in range(args.runs):
                r, e = one_run(cluster, client)
                reclaim.append(r * 1000)
                empty.append(e * 1000)
                print(f"run {i + 1:3d}: reclaim {r * 1000:7.1f} ms   empty scancel {e * 1000:6.1f} ms", flush=True)
    finally:
        if fresh:
            cluster.down()
    print()
    print(f"{'':28} {'p50':>8} {'p99':>8} {'max':>8}   (ms, {args.runs} runs)")
    for name, vals in (("scancel -> functions gone", reclaim), ("empty scancel round trip", empty)):
        print(f"{name:28} {pct(vals, .5):8.1f} {pct(vals, .99):8.1f} {max(vals):8.1f}")
    print(f"reclaim beyond scancel itself, p50: {statistics.median(reclaim) - statistics.median(empty):.1f} ms; "
          f"target p99 <= 100 ms: {'met' if pct(reclaim, .99) <= 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
