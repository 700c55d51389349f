"""The evaluation's experiment in small (bench/bench_colocation.py, docs/evaluation.md): a
tiny HPC Challenge run as a real batch job through ``sbatch --faas-share``, with two of the
mix's functions invoked through the co-scheduler beside it. hpcc must write a valid figure
for every kernel, and the functions must succeed on the lent CPUs, never on the kept ones."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "colocation_fns"))

import colocation_cluster as cc  # noqa: E402
import mix  # noqa: E402

# What hpcc reports on one rank (the ring latency/bandwidth tests need two and report -1).
KERNELS = {"HPL", "DGEMM", "STREAM Triad", "RandomAccess", "MPI RandomAccess", "FFT", "MPI FFT", "PTRANS"}


def _os_cpus(spec: str) -> set:
    """'0-3,8' -> {0, 1, 2, 3, 8}"""
    out = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def test_hpcc_runs_on_kept_cores_while_functions_run_on_lent_ones(cluster, tmp_path):
    for tool in ("hpcc", "mpirun"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps: Debian hpcc, openmpi-bin)")
    target = cc.Target.dev_cluster(cluster)
    names = list(mix.STDLIB_ONLY)  # html and compress: no vendored packages needed
    code = cc.function_code_dir(tmp_path / "code", None)
    registered = cc.register_mix(target, code, names, "coloc-test", mem_mb=128)
    load = cc.FunctionLoad(registered, {f"coloc-test-{n}": {"size": 64} for n in names}, rate=4.0)
    shape = cc.JobShape("cores", ("-N1", "-n1", "-c8", "--mem=2G", "--time=10", "--faas-share=cores=4,mem=1G"), 1)
    # N=600: a few seconds of hpcc even on an idle machine, long enough for the functions'
    # executors to start beside it.
    run = cc.run_once(target, tmp_path / "job", shape, 600, 64, load,
                      "--bind-to none --oversubscribe --mca btl self,vader "
                      "--mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1", timeout_s=600)

    assert set(run.kernels) == KERNELS and all(v > 0 for v in run.kernels.values())  # parse() checked validity
    kept = _os_cpus(run.kept)
    lent = set(run.lend["os_cpus"])
    assert kept and lent and not kept & lent  # the dev cluster's block map: kept CPU 0, lent CPU 1
    assert _os_cpus(run.affinity) <= kept  # the batch task (and so mpirun and hpcc) was bound to the kept CPUs
    fns = run.functions
    ran = [i for i in fns["per_invocation"] if i["state"] == "SUCCEEDED"]
    assert ran, f"no function succeeded beside hpcc: {fns['states']}"
    assert fns["states"].get("FAILED", 0) == 0 and fns["rejected"] == 0
    for inv in ran:
        assert set(inv["cpus"]) <= lent and not set(inv["cpus"]) & kept, inv
        assert set(inv["ran_on_cpus"]) <= lent, inv
    assert fns["ran_outside_lend"] == []
    assert 0 < fns["busy_core_s"] <= fns["lent_core_s"]
