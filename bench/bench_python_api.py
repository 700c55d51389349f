"""``slurm_faas.Executor.map`` of N no-op calls on the dev cluster, beside Parsl's
HighThroughputExecutor and Dask distributed on the same workload, in the same run.

    make bench-venv && .venv-bench/bin/python bench/bench_python_api.py [--n 10000] [--cores 4]

The workload is one function, ``_peers.noop`` (a module of bench/, which the nodes import:
it goes by reference), called N times with ``None``; each figure is N / the seconds from the
first submit to the last result, after a warm-up of the same kind.

- ours: a dev cluster (its own, in a temporary directory) with one batch job lending
  ``--cores`` cores; ``Executor.map`` with its default chunking (one invocation per chunk of
  items: ``chunksize=None``), then with ``chunksize=1`` (one invocation per item: what the
  queue itself sustains), then ``submit`` in a loop (one invocation each).
- Parsl: HighThroughputExecutor, 4 local workers (bench/_peers.py), one app call per item.
- Dask: distributed LocalCluster, 4 worker processes of 1 thread, ``client.map`` + ``gather``.
- ProcessPoolExecutor (4 workers): the local ceiling, for scale.

Target (issue 14): map >= 4x both Parsl and Dask. The machine is shared and has 2 cores:
read the ratios, not the rates. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _peers  # noqa: E402  (by its module name: the nodes and the peers' workers import it too)

from coscheduler.tools.devcluster import DevCluster  # noqa: E402
from faas_runtime.queue_client import Client  # noqa: E402


def timed(n: int, run: Callable[[], list]) -> float:
    t0 = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - t0
    assert len(out) == n
    return n / elapsed


def ours(cluster: DevCluster, n: int, cores: int) -> dict[str, float]:
    import slurm_faas

    env = cluster.client_env()
    job = subprocess.run(["sbatch", "--parsable", "-N1", "-c8", "--output=/dev/null", f"--faas-share=cores={cores},mem=4G",
                          "--wrap", "sleep 1800"], env=env, capture_output=True, text=True, check=True, cwd="/tmp")
    job_id = job.stdout.strip().split(";")[0]
    try:
        with slurm_faas.Executor(cluster.coscheduler_endpoint, str(cluster.munge_socket), mem="64M",
                                 code_dir=str(HERE)) as ex:
            with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket)) as client:
                deadline = time.monotonic() + 60
                while not any(str(s["job_id"]) == job_id and s["state"] == "ACTIVE" for s in client.slots()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the lending job's slot never appeared")
                    time.sleep(0.1)
            items = [None] * n
            list(ex.map(_peers.noop, [None] * 200, chunksize=1))  # executors warm on every lent core
            rates = {"map (default chunks)": timed(n, lambda: list(ex.map(_peers.noop, items)))}
            rates["map chunksize=1"] = timed(n, lambda: list(ex.map(_peers.noop, items, chunksize=1)))
            rates["submit loop"] = timed(n, lambda: [f.result() for f in [ex.submit(_peers.noop, None) for _ in items]])
        return rates
    finally:
        subprocess.run(["scancel", job_id], env=env, capture_output=True)


def dask_rate(n: int, workers: int = 4) -> Optional[float]:
    """``client.map`` of ``n`` no-ops on a distributed LocalCluster of ``workers`` processes,
    after a warm-up; None when Dask is not installed (run with .venv-bench/bin/python)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return None
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        client.gather(client.map(_peers.noop, [None] * (workers * 50), pure=False))
        return timed(n, lambda: client.gather(client.map(_peers.noop, [None] * n, pure=False)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="calls per figure")
    ap.add_argument("--cores", type=int, default=4, help="cores the batch job lends (executors)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-bench-pyapi-"))
    work.chmod(0o755)  # munged wants every parent of its socket searchable
    cluster = DevCluster(work / "cluster")
    try:
        cluster.up(timeout_s=120)
        print(f"machine: {os.cpu_count()} CPUs (shared: figures are noisy, read the ratios); N = {args.n}")
        mine = ours(cluster, args.n, args.cores)
        peers = {"Parsl HTEX (4 workers)": _peers.parsl_htex_rate(args.n),
                 "Dask LocalCluster (4 workers)": dask_rate(args.n),
                 "ProcessPoolExecutor (4 workers)": _peers.process_pool_rate(args.n)}
    finally:
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    for name, rate in {**{f"slurm_faas {k} ({args.cores} lent cores)": v for k, v in mine.items()}, **peers}.items():
        print(f"{name:<52} {'not installed' if rate is None else f'{rate:>10,.0f}/s'}")
    best = mine["map (default chunks)"]
    for name in ("Parsl HTEX (4 workers)", "Dask LocalCluster (4 workers)"):
        if peers[name]:
            print(f"map / {name}: {best / peers[name]:.1f}x (target >= 4x); "
                  f"map chunksize=1 / {name}: {mine['map chunksize=1'] / peers[name]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
