"""Peers the throughput benchmarks compare with, on the same no-op workload, in the same run:
Python's ProcessPoolExecutor (no network, no queue: the practical ceiling of a local pool)
and Parsl's HighThroughputExecutor (interchange + local worker pool), both with 4 workers.

Parsl comes from the benchmarks' own environment (``make bench-venv``), never from the
product's dependencies; without it the Parsl figure is None and the caller says so.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent


def noop(payload):
    """The no-op every peer runs: what tests/functions/probe.py's ``where`` does, less the
    fields that only make sense on a lent core."""
    return {"echo": payload, "cpus": sorted(os.sched_getaffinity(0)), "uid": os.getuid()}


def process_pool_rate(n: int, workers: int = 4) -> float:
    """``n`` no-ops submitted at once to a warm ProcessPoolExecutor; invocations/s until the
    last is done."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        wait([pool.submit(noop, None) for _ in range(workers * 50)])  # start and warm the workers
        t0 = time.perf_counter()
        done, _ = wait([pool.submit(noop, None) for _ in range(n)])
        elapsed = time.perf_counter() - t0
    assert all(f.exception() is None for f in done)
    return n / elapsed


def parsl_htex_rate(n: int, workers: int = 4) -> Optional[float]:
    """``n`` no-ops submitted at once to Parsl's HighThroughputExecutor with ``workers``
    local workers (LocalProvider, one block), after a warm-up; invocations/s until the last
    is done. None when Parsl is not installed (run with .venv-bench/bin/python)."""
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        return None
    # The workers import this module to run ``noop`` (Parsl pickles it by reference), and
    # Parsl starts its interchange and worker pool by script name from this Python's bin.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    run_dir = tempfile.mkdtemp(prefix="faas-bench-parsl-")
    config = Config(executors=[HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=workers,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
        run_dir=run_dir, strategy="none", usage_tracking=0)
    app = parsl.python_app(noop)
    with parsl.load(config):
        [f.result() for f in [app(None) for _ in range(workers * 50)]]  # workers up and warm
        t0 = time.perf_counter()
        futures = [app(None) for _ in range(n)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t0
    return n / elapsed


if __name__ == "__main__":
    import argparse

    import _peers  # by its module name, so that Parsl's workers import ``noop`` too

    ap = argparse.ArgumentParser(description="the peers alone")
    ap.add_argument("-n", type=int, default=5000)
    args = ap.parse_args()
    print(f"ProcessPoolExecutor(4): {_peers.process_pool_rate(args.n):,.0f}/s")
    print(f"Parsl HTEX (4 workers): {_peers.parsl_htex_rate(args.n) or float('nan'):,.0f}/s")
