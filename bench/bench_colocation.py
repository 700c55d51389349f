"""The paper's experiment with a real HPC benchmark: HPC Challenge (hpcc, Open MPI) as the
batch job, started through ``sbatch --faas-share``, alone and with a mix of real functions
(bench/colocation_fns/mix.py: Pillow thumbnails, HTML templates, networkx, numpy, zlib)
invoked through the product at a steady rate onto the cores it lends, and (``--remote-memory
SIZE``) with part of its spare memory leased as remote memory and read in a loop from elsewhere
(bench/colocation_memory.py).

    make bench-venv     # hpcc, openmpi-bin, the bench venv and the functions' packages
    .venv-bench/bin/python bench/bench_colocation.py [--rounds 5] [--n 2000] [--rate 4]
        [--modes cores,auto] [--out docs/evaluation] [--remote-memory 1G]
    # on a site's cluster, from a shell where sbatch and submit-function work:
    .venv-bench/bin/python bench/bench_colocation.py --site --partition batch --nodes 2 \
        --cores-per-node 64 --lend-cores 8 --auto-ranks-per-node 48 --n 40000 --rate 50

Each round runs the job alone, then with functions, then (--remote-memory) with the remote-
memory reader (alternating, so drift from elsewhere on the machine lands on every side), for
each mode:
  cores  -N nodes -n ranks -c cores/ranks --faas-share=cores=K,mem=M: hpcc on what it keeps;
  auto   -N nodes --ntasks-per-node=R --exclusive --faas-share=auto: MPI uses R ranks of the
         node's cores, the plugin lends the rest.
Printed and written (JSON + PNG, --out): per kernel median, spread and slowdown; function
throughput, latency p50/p99, and the share of lent core-seconds spent running functions;
with --analyze, ``faas-admin analyze --sacct --simulate`` over the same jobs beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "colocation_fns"))

import colocation_cluster as cc  # noqa: E402
import colocation_hpcc as hpcc  # noqa: E402
import colocation_memory  # noqa: E402
import mix  # noqa: E402

DEV_MPIRUN = ("--bind-to none --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none "
              "--mca mpi_yield_when_idle 1")


def shapes(args) -> list:
    common = [f"-N{args.nodes}", f"--mem={args.mem}", f"--time={args.time_limit}"]
    if args.partition:
        common.append(f"--partition={args.partition}")
    out = []
    for mode in args.modes.split(","):
        if mode == "cores":
            if args.cores_per_node % args.ranks_per_node:
                raise SystemExit("--cores-per-node must be a multiple of --ranks-per-node")
            out.append(cc.JobShape("cores", (*common, f"--ntasks-per-node={args.ranks_per_node}",
                                             f"--cpus-per-task={args.cores_per_node // args.ranks_per_node}",
                                             f"--faas-share=cores={args.lend_cores},mem={args.lend_mem}"),
                                   args.ranks_per_node * args.nodes))
        elif mode == "auto":
            out.append(cc.JobShape("auto", (*common, f"--ntasks-per-node={args.auto_ranks_per_node}", "--exclusive",
                                            "--faas-share=auto"), args.auto_ranks_per_node * args.nodes))
        else:
            raise SystemExit(f"unknown mode {mode!r} (cores, auto)")
    return out


def summarize_functions(runs: list) -> dict:
    """The co-located runs' function figures, pooled: latency over all invocations, rates and
    shares as medians over runs."""
    import statistics

    figs = [r.functions for r in runs]
    lat = [i["latency_s"] for f in figs for i in f["per_invocation"] if "latency_s" in i]
    run_s = [i["run_s"] for f in figs for i in f["per_invocation"] if "run_s" in i]
    cpu_s = [i["cpu_s"] for f in figs for i in f["per_invocation"] if "cpu_s" in i]
    return {
        "invoked": sum(f["invoked"] for f in figs),
        "succeeded": sum(f["states"].get("SUCCEEDED", 0) for f in figs),
        "states": {s: sum(f["states"].get(s, 0) for f in figs) for s in {k for f in figs for k in f["states"]}},
        "errors": sorted({e for f in figs for e in f.get("errors", [])})[:10],
        "throughput_per_s": statistics.median(f["throughput_per_s"] for f in figs),
        "latency_p50_s": hpcc.percentile(lat, 50) if lat else None,
        "latency_p99_s": hpcc.percentile(lat, 99) if lat else None,
        "run_p50_s": hpcc.percentile(run_s, 50) if run_s else None,
        "cpu_p50_s": hpcc.percentile(cpu_s, 50) if cpu_s else None,
        "useful_share": statistics.median(f["useful_share"] for f in figs),
        "useful_share_of_real_cpus": statistics.median(f["useful_share_of_real_cpus"] for f in figs),
        "lent_cores": len(runs[0].lend["slurm_cpus"]), "lent_os_cpus": figs[0]["lent_os_cpus"],
        "ran_outside_lend": sum(len(f["ran_outside_lend"]) for f in figs),
        "busy_core_s": sum(f["busy_core_s"] for f in figs), "lent_core_s": sum(f["lent_core_s"] for f in figs),
        "function_cpu_s": sum(f["function_cpu_s"] for f in figs),
        "latencies_s": [round(x, 3) for x in sorted(lat)],
    }


def summarize_memory(alone: list, reading: list) -> dict:
    """The remote-memory side: hpcc alone vs beside the reader, and the reader's bandwidth."""
    import statistics

    kernels = hpcc.compare([r.kernels for r in alone], [r.kernels for r in reading])
    for label, k in kernels.items():
        k["pair_slowdowns"] = [a.kernels[label] / b.kernels[label] - 1 for a, b in zip(alone, reading)]
    bw = [r.memory["read_mb_per_s"] for r in reading if r.memory.get("read_mb_per_s") is not None]
    return {"kernels": kernels,
            "reader": {"size": reading[0].memory["size"], "block": reading[0].memory["block"],
                       "read_mb_per_s": hpcc.spread(bw) if bw else None, "runs_with_figure": len(bw),
                       "bad_blocks": sum(r.memory.get("bad_blocks") or 0 for r in reading),
                       "errors": [r.memory["error"] for r in reading if r.memory.get("error")],
                       "server_cpus": reading[0].memory.get("server_cpus"),
                       "per_run_mb_per_s": [r.memory.get("read_mb_per_s") for r in reading],
                       "median_mb_per_s": statistics.median(bw) if bw else None}}


def run_analyze(target: cc.Target, since: str, capacity: int, mix_file: Path) -> dict:
    """``faas-admin analyze --sacct --simulate`` over this experiment's jobs (JSON)."""
    faas_admin = shutil.which("faas-admin") or str(Path(sys.executable).parent / "faas-admin")
    out = target.run(faas_admin, "analyze", "--sacct", "--since", since, "--capacity", str(capacity),
                     "--simulate", "--mix", str(mix_file), "--json", check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout)


def analyze_mix(funcs: dict) -> dict:
    """The measured function mix as an analyze --mix file: one class, the measured run time."""
    return {"name": "colocation-measured", "functions": [
        {"name": "mix", "weight": 1, "cores": 1, "mem_mb": 256, "median_s": max(0.05, funcs["run_p50_s"] or 1.0),
         "sigma": 0.5, "timeout_s": 60}]}


def measured_vs_simulated(runs: dict, analyzed: dict) -> dict:
    """Recovered core-seconds over the experiment's jobs: what analyze --simulate predicts
    from their accounting, beside what the lends and functions did (all runs, alone ones
    included: they lent too, with no demand)."""
    lent = sum(len(r.lend["slurm_cpus"]) * r.window_s for sides in runs.values() for rs in sides.values() for r in rs)
    beside = [r for sides in runs.values() for r in sides["beside"]]
    out = {"measured": {"lent_core_s": lent, "busy_core_s": sum(r.functions["busy_core_s"] for r in beside),
                        "function_cpu_s": sum(r.functions["function_cpu_s"] for r in beside),
                        "jobs": sum(len(rs) for sides in runs.values() for rs in sides.values())}}
    sim = analyzed.get("simulation")
    if sim:
        aware = sim["scenarios"]["walltime_aware"]
        out["simulated"] = {"spare_core_s": sim["spare_core_seconds"], "jobs": sim["opted_in_jobs"],
                            "recovered_core_s": aware["estimated_total"]["recovered_core_seconds"],
                            "recovered_share_of_spare": aware["recovered_share_of_spare"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--site", action="store_true", help="use the shell's cluster (SLURM_CONF, FAAS_COSCHEDULER)")
    where.add_argument("--dev-cluster", type=Path, help="dev cluster directory (default: a fresh one, torn down)")
    ap.add_argument("--rounds", type=int, default=5, help="alone/with pairs per mode (>= 5 for the evaluation)")
    ap.add_argument("--modes", default="cores,auto")
    ap.add_argument("--partition", default="")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--cores-per-node", type=int, default=8, help="cores the job holds per node (cores mode)")
    ap.add_argument("--ranks-per-node", type=int, default=1, help="MPI ranks per node (cores mode)")
    ap.add_argument("--lend-cores", type=int, default=4, help="K of --faas-share=cores=K")
    ap.add_argument("--auto-ranks-per-node", type=int, default=4, help="MPI ranks per node in auto mode")
    ap.add_argument("--mem", default="8G", help="sbatch --mem (per node)")
    ap.add_argument("--lend-mem", default="4G")
    ap.add_argument("--time-limit", default="60", help="sbatch --time (minutes)")
    ap.add_argument("--n", type=int, default=2000, help="HPL order N (sizes every hpcc kernel)")
    ap.add_argument("--nb", type=int, default=128)
    ap.add_argument("--rate", type=float, default=4.0, help="function invocations per second")
    ap.add_argument("--functions", default=",".join(mix.MIX), help="mix functions to use")
    ap.add_argument("--function-packages", type=Path, default=ROOT / ".venv-bench" / "function-packages")
    ap.add_argument("--mpirun-args", default=None, help=f"default on the dev cluster: {DEV_MPIRUN!r}")
    ap.add_argument("--workdir", type=Path, default=None, help="job directories (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation")
    ap.add_argument("--analyze", action="store_true", help="also run faas-admin analyze --sacct --simulate")
    ap.add_argument("--remote-memory", default="", metavar="SIZE",
                    help="also run each job with SIZE (e.g. 1G) of its lend leased as remote memory and read in a loop")
    ap.add_argument("--memory-block", default="4M", help="the remote-memory reader's block")
    ap.add_argument("--reader-cpus", default=None,
                    help="CPUs of the reader (default on the dev cluster: the lend's real CPUs; on --site: any)")
    args = ap.parse_args()
    if args.rounds < 1 or args.rate <= 0 or args.n < 1:
        raise SystemExit("--rounds >= 1, --rate > 0 and --n >= 1 please")
    names = args.functions.split(",")
    unknown = [n for n in names if n not in mix.MIX]
    if unknown:
        raise SystemExit(f"unknown functions {unknown}; the mix has {list(mix.MIX)}")
    needs_packages = [n for n in names if n not in mix.STDLIB_ONLY]
    if needs_packages and not args.function_packages.is_dir():
        raise SystemExit(f"{args.function_packages} is missing ({needs_packages} need it): make bench-venv")

    memory = None
    if args.remote_memory:
        from faas_runtime.remote_memory import parse_size

        size, block = parse_size(args.remote_memory), parse_size(args.memory_block)
        if block <= 0 or block % 256 or size % block:
            raise SystemExit("--remote-memory must be a multiple of --memory-block, itself a multiple of 256")
        fabric_env = () if args.site else (("FAAS_FABRIC", "tcp"), ("FAAS_FABRIC_DOMAIN", "lo"))
        cpus = tuple(int(c) for c in args.reader_cpus.split(",")) if args.reader_cpus else None
        memory = colocation_memory.MemoryLoad(size, block, cpus, pin_to_lend=args.reader_cpus is None and not args.site,
                                              fabric_env=fabric_env)

    cluster = None
    if args.site:
        target = cc.Target.site()
    else:
        from coscheduler.tools.devcluster import DevCluster

        cluster = DevCluster(args.dev_cluster or Path(tempfile.mkdtemp(prefix="faas-colocation-", dir="/var/tmp")))
        cluster.up(timeout_s=120)
        target = cc.Target.dev_cluster(cluster)
    mpirun_args = args.mpirun_args if args.mpirun_args is not None else ("" if args.site else DEV_MPIRUN)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="colocation-runs-", dir="/var/tmp"))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    load_before = os.getloadavg()
    try:
        code = cc.function_code_dir(workdir / "code", args.function_packages if needs_packages else None)
        registered = cc.register_mix(target, code, names, "coloc")
        load = cc.FunctionLoad(registered, {f"coloc-{n}": mix.MIX[n][1] for n in names}, args.rate)
        sides = [("alone", None, None), ("beside", load, None)] + ([("memory", None, memory)] if memory else [])
        runs = {s.name: {side: [] for side, _l, _m in sides} for s in shapes(args)}
        print(f"hpcc N={args.n} NB={args.nb}; functions {names} at {args.rate:g}/s; {args.rounds} rounds; "
              f"load {load_before[0]:.1f}; job dirs in {workdir}", flush=True)
        for rnd in range(args.rounds):
            for shape in shapes(args):
                for side, fl, mem in sides:
                    r = cc.run_once(target, workdir / f"{shape.name}-{rnd}-{side}", shape, args.n, args.nb, fl,
                                    mpirun_args, memory=mem)
                    runs[shape.name][side].append(r)
                    extra = (f"; functions {r.functions['states']} busy {100 * r.functions['useful_share']:.0f} %"
                             if fl else "")
                    if mem:
                        bw = r.memory["read_mb_per_s"]
                        extra = (f"; remote memory read {'-' if bw is None else f'{bw:.0f}'} MB/s, bad blocks "
                                 f"{r.memory['bad_blocks']}{', ' + r.memory['error'] if r.memory['error'] else ''}")
                    print(f"round {rnd} {shape.name:<5} {side:<6} job {r.job_id} {r.window_s:6.1f} s  HPL "
                          f"{r.kernels['HPL']:.2f} Gflop/s  Triad {r.kernels.get('STREAM Triad', 0):.1f} GB/s{extra}",
                          flush=True)
        result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
                              "dev_cluster": cluster is not None},
                  "modes": {}}
        for mode, sides in runs.items():
            kernels = hpcc.compare([r.kernels for r in sides["alone"]], [r.kernels for r in sides["beside"]])
            for label, k in kernels.items():  # per interleaved pair: the spread of the ratio itself
                k["pair_slowdowns"] = [a.kernels[label] / b.kernels[label] - 1
                                       for a, b in zip(sides["alone"], sides["beside"])]
            result["modes"][mode] = {
                "kernels": kernels, "functions": summarize_functions(sides["beside"]),
                "lend": sides["alone"][0].lend, "kept": sides["alone"][0].kept,
                "window_s": {s: [r.window_s for r in rs] for s, rs in sides.items()},
                "jobs": {s: [r.job_id for r in rs] for s, rs in sides.items()}}
            if sides.get("memory"):
                result["modes"][mode]["remote_memory"] = summarize_memory(sides["alone"], sides["memory"])
        if args.analyze:
            mix_file = workdir / "analyze-mix.json"
            first = next(iter(result["modes"].values()))["functions"]
            mix_file.write_text(json.dumps(analyze_mix(first)))
            nodes = 3 if cluster is not None else args.nodes
            result["analyze"] = run_analyze(target, since, nodes * args.cores_per_node, mix_file)
            result["capacity"] = measured_vs_simulated(runs, result["analyze"])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "colocation.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (workdir / "runs.json").write_text(json.dumps({m: {s: [r.__dict__ for r in rs] for s, rs in sides.items()}
                                                       for m, sides in runs.items()}, default=str))
        report(result)
        import colocation_plots

        for png in colocation_plots.plot(result, args.out):
            print(f"wrote {png}")
    finally:
        if cluster is not None and args.dev_cluster is None:
            cluster.down()
    return 0


def report(result: dict) -> None:
    m = result["machine"]
    print(f"\nload average before {m['load_before'][0]:.1f}, after {m['load_after'][0]:.1f} on {m['cpus']} CPUs")
    for mode, r in result["modes"].items():
        print(f"\nmode {mode}: keeps {r['kept']}, lends Slurm cores {r['lend']['slurm_cpus']} "
              f"(OS CPUs {sorted(set(r['lend']['os_cpus']))})")
        print(f"  {'kernel':<18}{'alone (median, min-max)':>34}{'beside functions':>34}{'slowdown':>10}")
        for label, k in r["kernels"].items():
            a, b = k["alone"], k["beside"]
            print(f"  {label:<18}{a['median']:>12.4g} ({a['min']:.4g}-{a['max']:.4g}){'':>3}"
                  f"{b['median']:>12.4g} ({b['min']:.4g}-{b['max']:.4g}){100 * k['slowdown']:>+9.1f} %")
        f = r["functions"]
        seconds = {k: "-" if f[k] is None else f"{f[k]:.2f} s" for k in ("latency_p50_s", "latency_p99_s", "run_p50_s")}
        print(f"  functions: {f['succeeded']} of {f['invoked']} succeeded {f['states']}, "
              f"{f['throughput_per_s']:.2f}/s, latency p50 {seconds['latency_p50_s']} p99 {seconds['latency_p99_s']}, "
              f"run p50 {seconds['run_p50_s']}")
        for error in f.get("errors", []):
            print(f"    failed: {error}")
        print(f"  lent core-seconds running functions: {100 * f['useful_share']:.0f} %; function CPU time / lent real "
              f"CPU time: {100 * f['useful_share_of_real_cpus']:.0f} %; ran outside the lend: {f['ran_outside_lend']}")
        rm = r.get("remote_memory")
        if rm:
            rd = rm["reader"]
            bw = rd["read_mb_per_s"]
            print(f"  beside remote memory ({rd['size'] >> 20} MiB leased on the lend, read in {rd['block'] >> 20} MiB "
                  f"blocks):")
            for label, k in rm["kernels"].items():
                print(f"    {label:<18}{k['beside']['median']:>12.4g} ({k['beside']['min']:.4g}-{k['beside']['max']:.4g})"
                      f"{100 * k['slowdown']:>+9.1f} %")
            rate = "-" if bw is None else f"{bw['median']:.0f} MB/s median ({bw['min']:.0f}-{bw['max']:.0f})"
            print(f"    reader: {rate}, bad blocks {rd['bad_blocks']}, errors {rd['errors'] or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
