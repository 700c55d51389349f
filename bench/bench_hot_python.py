"""Hot calls through the public lease API (``slurm_faas.lease(fn).call(obj)``), beside a raw
pyzmq DEALER/ROUTER round trip and, over RMA, a raw C libfabric one, in one run.

    .venv-bench/bin/python bench/bench_hot_python.py [--n 3000] [--fabric tcp|off] [--repeat 3]

The lease is the object ``slurm_faas.lease`` returns for a Python callable (``PythonLease``),
here on an executor a real faas-agent started (bench/_local_agent.py: no Slurm, no
co-scheduler: the lease's grant is the agent's own), calling ``_pyapi_fns.echo`` by
reference: each call pickles the callable and its arguments (protocol 5) and unpickles the
value, as users' calls do. Payloads: a dict of 64 B pickled, and a 1 MiB numpy array.
Median and p99 of N round trips after a warm-up; ratios against the raw round trip of the
same size. Targets (issue 14): 64 B over ZeroMQ <= 1.3x raw pyzmq; over RMA (tcp) <= 2x
raw C libfabric; 1 MiB array over RMA >= 0.8x raw bandwidth (= <= 1.25x its time).

Placement: the executor runs on the last CPU of this process's affinity (the lent CPU);
the client and the raw baselines go where the scheduler puts them. ``--pin`` pins the
client (this process, each raw client) to the other CPUs and each raw server to the lent
one, the placement of a cluster (client and executor on different nodes), which on a quiet
machine keeps a client from spinning on the executor's CPU (both then wait for the
scheduler's time slices: milliseconds a call); on a loaded machine pinned busy-pollers
wait for those slices behind other work, so it is off by default. Each raw baseline runs
before its lease exists: an RMA lease's executor busy-polls the lent CPU while attached.

The 1 MiB raw C baseline is the faster of two ways to move 1 MiB each way with
completions (bench/fabric_raw.c): ``pingpong`` (each side fi_writedata's 1 MiB into the
other's registered buffer) and ``readpp`` (each side signals with 32 bytes and the other
fi_reads the 1 MiB, which is how the bulk path moves it). ``--repeat R`` runs the whole
comparison R times and prints the range of each ratio. ``--before REV`` runs REV's own
copy of this benchmark after each of ours (a git worktree, bench/_trees.py; its C
extensions built when they differ) and prints its lease rows beside ours: before/after
in the same minutes. The machine is shared: read the ratios. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
from contextlib import nullcontext
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


def raw_c(binary, provider: str, size: int, n: int, pin: bool) -> tuple[float, str]:
    """The raw C libfabric round trip (median us) of ``size`` bytes each way and how: at
    64 B the write ping-pong, larger the faster of it and the read ping-pong."""
    from bench_fabric import raw

    os.environ["FABRIC_RAW_PIN"] = "1" if pin else "0"  # server on the lent CPU, client on the others
    best = (raw(binary, provider, "pingpong", size, n), "pingpong")
    if size >= 65536:
        best = min(best, (raw(binary, provider, "readpp", size, n), "readpp"))
    return best


def run_once(la, slot, code: str, paths: dict, args, raw_binary, lent: list[int]
             ) -> dict[tuple[str, str], tuple[float, float]]:
    """One comparison of every path and payload; prints its rows, returns (ours, raw) in us."""
    values = payloads()
    ratios = {}
    print(f"{'payload':<8} {'path':<34} {'median us':>10} {'p99 us':>10} {'n':>6}")
    for path, fabric in paths.items():
        refs = {}
        for label, value in values.items():  # the baselines first: no executor spins meanwhile
            size = len(pickle.dumps(value, protocol=5))
            n = args.n if size < 65536 else max(50, args.n // 10)
            if fabric is None:
                server_cpus = lent if args.pin else None
                refs[label] = (_fmt(raw_round_trips(size, n, warmup=n // 10, server_cpus=server_cpus))[0], "raw pyzmq")
            else:
                us, how = raw_c(raw_binary, args.fabric, size, max(n, 200), args.pin)
                refs[label] = (us, f"raw C libfabric {args.fabric} {how}")
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
                ref, ref_name = refs[label]
                print(f"{label:<8} {ref_name:<34} {ref:>10.1f} {'':>10} {n:>6}")
                t = _fmt(lease_round_trips(lease, value, n, warmup=n // 10))
                ratios[(label, path)] = (t[0], ref)
                print(f"{label:<8} {'slurm_faas.lease().call ' + path:<34} {t[0]:>10.1f} {t[1]:>10.1f} {n:>6}"
                      f"   / {ref_name.split(' readpp')[0].split(' pingpong')[0]}: {t[0] / ref:.2f}x")
        finally:
            lease.release()
            for _ in range(20):
                la.step(5)
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000, help="round trips at 64 B (1 MiB: n/10)")
    ap.add_argument("--fabric", default="tcp", help="provider of the RMA rows, or off")
    ap.add_argument("--repeat", type=int, default=1, help="run the comparison this many times; print ranges")
    ap.add_argument("--no-cgroups", dest="cgroups", action="store_false",
                    help="the executor outside a cgroup: without the lent cores' low CPU weight, which on a "
                         "loaded machine dominates what the software path costs")
    ap.add_argument("--before", default="", help="a revision whose lease rows run beside ours (see above)")
    ap.add_argument("--pin", action="store_true",
                    help="client on the CPUs but the lent one, raw servers on the lent one (see above)")
    args = ap.parse_args()
    from _local_agent import LocalAgent
    from _trees import checkout
    from bench_fabric import build_raw

    from faas_runtime.fabric import FabricConfig

    la = LocalAgent(cgroups=args.cgroups and os.geteuid() == 0)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        lent = [cpus[-1]]
        slot = la.lend(1, lent)
        if args.pin and len(cpus) > 1:
            os.sched_setaffinity(0, cpus[:-1])  # the client off the lent CPU (before any client thread starts)
        code = code_dir(la.root / "code")  # removed with the agent's directory
        paths = {"zmq": None}
        if args.fabric != "off":
            paths[f"rma {args.fabric}"] = FabricConfig(args.fabric, "lo" if args.fabric == "tcp" else "")
        raw_binary = build_raw() if len(paths) > 1 else None
        print(f"load average {os.getloadavg()[0]:.2f}; executor on CPU {lent}, client on "
              f"{sorted(os.sched_getaffinity(0))}; cgroups {'on' if la.agent.subtree else 'off'}")
        with checkout(args.before, la.root / "before") if args.before else nullcontext() as before:
            runs, befores = [], []
            for _ in range(args.repeat):
                runs.append(run_once(la, slot, code, paths, args, raw_binary, lent))
                if before is not None:
                    befores.append(run_before(before, args, runs[-1]))
        if args.repeat > 1:
            print(f"ratios over {args.repeat} runs (min..max), load average {os.getloadavg()[0]:.2f}:")
            for key in runs[0]:
                got = [r[key][0] / r[key][1] for r in runs if key in r]
                print(f"  {key[0]:<6} {key[1]:<8} {min(got):.2f}x .. {max(got):.2f}x")
        if befores:
            print(f"lease rows, this tree against {args.before} (median us, this / before), {len(befores)} runs each:")
            for key in runs[0]:
                got = [(r[key][0], b[key]) for r, b in zip(runs, befores) if key in b]
                if got:
                    print(f"  {key[0]:<6} {key[1]:<8} " + "; ".join(f"{a:.1f} / {b:.1f}" for a, b in got)
                          + f"   ratio {min(a / b for a, b in got):.2f} .. {max(a / b for a, b in got):.2f}")
    finally:
        la.close()
    return 0


def run_before(tree: Path, args, ours: dict) -> dict[tuple[str, str], float]:
    """Run ``tree``'s copy of this benchmark once (its own code: PYTHONPATH names it, the
    editable install's finder is dropped); returns its lease rows' medians in us."""
    from _trees import script_argv

    argv = [sys.executable, *script_argv(tree / "bench" / "bench_hot_python.py"), "--n", str(args.n),
            "--fabric", args.fabric, *([] if args.cgroups else ["--no-cgroups"]), *(["--pin"] if args.pin else [])]
    out = subprocess.run(argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         timeout=1800)
    rows = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(\d+ \w?i?B)\s+slurm_faas\.lease\(\)\.call (.+?)\s+([\d.]+)\s", line)
        if m:
            rows[(m.group(1), m.group(2))] = float(m.group(3))
    print(f"before: {len(rows)} lease rows" + ("" if rows else f" (exit {out.returncode}: {out.stderr[-500:]})"))
    for key, us in rows.items():
        if key in ours:
            print(f"{key[0]:<8} {'before ' + key[1]:<34} {us:>10.1f}   this tree / before: {ours[key][0] / us:.2f}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
