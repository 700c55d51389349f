"""Hot calls through the public lease API (``slurm_faas.lease(fn).call(obj)``), beside a raw
pyzmq DEALER/ROUTER round trip and, over RMA, a raw C libfabric one, in one run.

    .venv-bench/bin/python bench/bench_hot_python.py [--n 3000] [--fabric tcp|off]

The lease is the object ``slurm_faas.lease`` returns for a Python callable (``PythonLease``),
here on an executor a real faas-agent started (bench/_local_agent.py: no Slurm, no
co-scheduler: the lease's grant is the agent's own), calling ``_pyapi_fns.echo`` by
reference: each call pickles the callable and its arguments (protocol 5) and unpickles the
value, as users' calls do. Payloads: a dict of 64 B pickled, and a 1 MiB numpy array.
Median and p99 of N round trips after a warm-up; ratios against the raw round trip of the
same size. Targets (issue 14): 64 B over ZeroMQ <= 1.3x raw pyzmq; over RMA (tcp) <= 2x
raw C libfabric; 1 MiB array over RMA >= 0.8x raw bandwidth (= <= 1.25x its time).
The machine is shared: read the ratios. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _pyapi_fns  # noqa: E402
from bench_hot import _fmt, raw_round_trips  # noqa: E402

from faas_runtime import pyapi  # noqa: E402
from slurm_faas.hot import PythonLease  # noqa: E402


def payloads() -> dict[str, object]:
    import numpy as np

    small = {"x": 1, "name": "y" * 20}
    small["name"] += "y" * (64 - len(pickle.dumps(small, protocol=5)))
    assert len(pickle.dumps(small, protocol=5)) == 64
    return {"64 B": small, "1 MiB": np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)}


def code_dir(where: Path) -> str:
    """What the executor imports: this module's functions and numpy (functions see their
    code directory only, docs/functions.md), linked into ``where``."""
    import numpy

    where.mkdir(mode=0o755)
    (where / "_pyapi_fns.py").symlink_to(HERE / "_pyapi_fns.py")
    pkg = Path(numpy.__file__).resolve().parent
    for dep in (pkg, pkg.parent / "numpy.libs"):
        if dep.exists():
            (where / dep.name).symlink_to(dep, target_is_directory=True)
    return str(where)


def lease_round_trips(lease: PythonLease, value: object, n: int, warmup: int) -> list[float]:
    import time

    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        out = lease.call(value)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert type(out) is type(value) and pickle.dumps(out) == pickle.dumps(value)
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000, help="round trips at 64 B (1 MiB: n/10)")
    ap.add_argument("--fabric", default="tcp", help="provider of the RMA rows, or off")
    ap.add_argument("--no-cgroups", dest="cgroups", action="store_false",
                    help="the executor outside a cgroup: without the lent cores' low CPU weight, which on a "
                         "loaded machine dominates what the software path costs")
    args = ap.parse_args()
    from _local_agent import LocalAgent
    from bench_fabric import build_raw, raw

    from faas_runtime.fabric import FabricConfig

    la = LocalAgent(cgroups=args.cgroups and os.geteuid() == 0)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        slot = la.lend(1, [cpus[-1]])
        code = code_dir(la.root / "code")  # removed with the agent's directory
        values = payloads()
        paths = {"zmq": None}
        if args.fabric != "off":
            paths[f"rma {args.fabric}"] = FabricConfig(args.fabric, "lo" if args.fabric == "tcp" else "")
        raw_c = build_raw() if len(paths) > 1 else None
        print(f"{'payload':<8} {'path':<34} {'median us':>10} {'p99 us':>10} {'n':>6}")
        for path, fabric in paths.items():
            # one lease at a time: an RMA executor busy-polls its (here: the only lent) CPU
            hot = la.lease(slot, pyapi.ENTRYPOINT, code_dir=code, fabric=fabric)
            if fabric is not None and hot.transport != "rma":
                print(f"RMA {args.fabric}: not available ({hot.rma_error or 'no RMA offered'}), rows skipped")
                hot.release()
                continue
            lease = PythonLease(hot, _pyapi_fns.echo, by_value=False)
            try:
                for label, value in values.items():
                    size = len(pickle.dumps(value, protocol=5))
                    n = args.n if size < 65536 else max(50, args.n // 10)
                    if fabric is None:
                        ref = _fmt(raw_round_trips(size, n, warmup=n // 10))[0]
                        ref_name = "raw pyzmq"
                    else:
                        ref = raw(raw_c, args.fabric, "pingpong", size, max(n, 200))
                        ref_name = f"raw C libfabric {args.fabric}"
                    print(f"{label:<8} {ref_name:<34} {ref:>10.1f} {'':>10} {n:>6}")
                    t = _fmt(lease_round_trips(lease, value, n, warmup=n // 10))
                    print(f"{label:<8} {'slurm_faas.lease().call ' + path:<34} {t[0]:>10.1f} {t[1]:>10.1f} {n:>6}"
                          f"   / {ref_name}: {t[0] / ref:.2f}x")
            finally:
                lease.release()
                for _ in range(20):
                    la.step(5)
    finally:
        la.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
