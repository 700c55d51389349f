"""How fast `faas-admin analyze` is on LANL-CM5, how it grows with log size, and its memory.

    PYTHONPATH=. .venv/bin/python bench/bench_analyze.py [--simulate] [path.swf.gz]

Builds prefixes of the log (25 %, 50 %, 100 %) and longer logs (200 %, 400 %: the log
repeated, each copy shifted past the previous one's end), then analyses each in a fresh
process and prints wall seconds, seconds per 100k jobs, the growth ratio against the
previous size, peak RSS (resource.getrusage in that process), and the ratio against a
baseline measured in the same run on the same file: a plain gzip line-count pass.
No assertions: numbers to read, not to gate on.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path("/work/shared/data/swf/LANL-CM5-1994-4.1-cln.swf.gz")
ROOT = Path(__file__).resolve().parents[1]


def child(path: str, mode: str) -> None:
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    if mode == "baseline":
        n = 0
        with gzip.open(path, "rt") as fh:
            for _ in fh:
                n += 1
    else:
        from coscheduler.tools.analysis.simulate import SimConfig, simulate
        from coscheduler.tools.analysis.stats import Analysis
        from coscheduler.tools.analysis.swf import SWFReader

        r = SWFReader(path)
        it = iter(r)
        first = next(it)
        a = Analysis(capacity=r.max_procs)
        a.add(first)
        for j in it:
            a.add(j)
        a.finish()
        n = a.records
        if mode == "simulate":
            simulate(lambda: SWFReader(path), SimConfig())
    secs = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": secs, "jobs": n, "rss_mb": rss_mb}))


def run_child(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def build_inputs(src: Path, tmp: Path) -> list[tuple[str, Path]]:
    with gzip.open(src, "rt") as fh:
        header, jobs = [], []
        for line in fh:
            (header if line.startswith(";") else jobs).append(line)
    span = max(float(l.split()[1]) + max(0.0, float(l.split()[2])) + max(0.0, float(l.split()[3]))
               for l in jobs) + 1
    out = []
    for label, frac in (("25%", 0.25), ("50%", 0.5), ("100%", 1.0)):
        p = tmp / f"lanl_{label[:-1]}.swf.gz"
        with gzip.open(p, "wt", compresslevel=1) as g:
            g.writelines(header)
            g.writelines(jobs[: int(len(jobs) * frac)])
        out.append((label, p))
    for copies in (2, 4):
        p = tmp / f"lanl_{copies}00.swf.gz"
        with gzip.open(p, "wt", compresslevel=1) as g:
            g.writelines(header)
            for c in range(copies):
                for l in jobs:
                    f = l.split()
                    f[0] = str(int(f[0]) + c * 1_000_000)
                    f[1] = str(int(float(f[1]) + c * span))
                    g.write(" ".join(f) + "\n")
        out.append((f"{copies}00%", p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--simulate", action="store_true", help="also time --simulate (mixed mix)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.path, args.child)
        return
    src = Path(args.path)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(src, Path(tmp))
        base = run_child(src, "baseline")
        print(f"baseline (gzip line count of {src.name}): {base['seconds']:.3f} s, "
              f"peak RSS {base['rss_mb']:.0f} MB")
        print(f"{'size':>6} {'jobs':>8} {'seconds':>8} {'s/100k jobs':>11} {'growth':>7} "
              f"{'x baseline':>10} {'peak RSS MB':>11}")
        prev = None
        full = None
        for label, p in inputs:
            r = run_child(p, "analyze")
            growth = f"{r['seconds'] / prev['seconds']:.2f}" if prev else "-"
            print(f"{label:>6} {r['jobs']:>8} {r['seconds']:>8.2f} "
                  f"{r['seconds'] / r['jobs'] * 1e5:>11.2f} {growth:>7} "
                  f"{r['seconds'] / base['seconds']:>10.1f} {r['rss_mb']:>11.0f}")
            prev = r
            if label == "100%":
                full = r
        if args.simulate:
            r = run_child(src, "simulate")
            print(f"analyze + simulate (mixed, budget 50k, both scenarios) on the full log: "
                  f"{r['seconds']:.2f} s ({r['seconds'] / full['seconds']:.1f} x analyze alone), "
                  f"peak RSS {r['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
