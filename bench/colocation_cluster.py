"""The cluster side of bench/bench_colocation.py: one hpcc batch job through ``sbatch
--faas-share``, with or without the function mix invoked at a steady rate onto what it lends,
and what each run measured. Works on the dev cluster (coscheduler.tools.devcluster) and on a
site's cluster (the shell's SLURM_CONF / FAAS_COSCHEDULER / FAAS_MUNGE_SOCKET).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import colocation_hpcc as hpcc
import colocation_memory

from coscheduler.tools.devcluster_procs import poll_until

FUNCTIONS_DIR = Path(__file__).resolve().parent / "colocation_fns"
GO_FILE = "start-hpcc"
JOB_SCRIPT = """#!/bin/bash
# One HPC Challenge run on the cores this job keeps (the plugin bound this task to them).
echo "kept=${{SLURM_FAAS_KEPT_CPUS:-}} bound=${{SLURM_FAAS_BOUND:-}} affinity=$(taskset -pc $$ | sed 's/.*: //')"
# The benchmark says when to start (file {go}): once the functions beside it run, so their
# executors' cold starts fall before the measured window, alone and co-located runs alike.
for _ in $(seq 1500); do [ -e {go} ] && break; sleep 0.2; done
echo "start=$(date +%s.%N)"
mpirun --allow-run-as-root {mpirun_args} -np {ranks} {hpcc}
rc=$?
echo "end=$(date +%s.%N)"
echo "rc=$rc"
exit $rc
"""


class ColocationError(RuntimeError):
    """A run could not be done as asked (job failed, no lend, hpcc output invalid)."""


@dataclass(frozen=True)
class Target:
    """Where jobs and functions go: the environment of sbatch and the co-scheduler's address."""
    env: dict
    endpoint: str
    munge_socket: Optional[str]

    @classmethod
    def dev_cluster(cls, cluster) -> "Target":
        return cls(cluster.client_env(), cluster.coscheduler_endpoint, str(cluster.munge_socket))

    @classmethod
    def site(cls) -> "Target":
        endpoint = os.environ.get("FAAS_COSCHEDULER")
        if not endpoint:
            raise ColocationError("--site needs FAAS_COSCHEDULER (and SLURM_CONF, FAAS_MUNGE_SOCKET) set")
        return cls(dict(os.environ), endpoint, os.environ.get("FAAS_MUNGE_SOCKET"))

    def client(self):
        from faas_runtime.queue_client import Client

        return Client(self.endpoint, munge_socket=self.munge_socket)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, check=check, timeout=60)


@dataclass(frozen=True)
class JobShape:
    """One way of asking for the batch job: its sbatch arguments and the MPI ranks it runs."""
    name: str  # "cores" or "auto"
    sbatch_args: tuple
    ranks: int  # MPI ranks in total (mpirun -np)


@dataclass
class FunctionLoad:
    """The mix invoked while hpcc runs: ``rate`` invocations per second, round robin."""
    names: list  # registered function names
    payloads: dict  # name -> payload (JSON-able)
    rate: float


@dataclass
class RunResult:
    shape: str
    with_functions: bool
    job_id: int
    kernels: dict  # label -> figure (colocation_hpcc.parse)
    window_s: float  # hpcc's wall time (start= .. end= in the job's output)
    kept: str  # SLURM_FAAS_KEPT_CPUS
    affinity: str  # the batch task's CPUs as it saw them
    lend: Optional[dict] = None  # the slot: slurm_cpus, os_cpus, mem_mb
    functions: dict = field(default_factory=dict)  # see function_figures()
    memory: dict = field(default_factory=dict)  # the remote-memory reader's (colocation_memory.reader_figures)


def register_mix(target: Target, code_dir: Path, names: list, prefix: str, mem_mb: int = 256) -> list:
    """Register the mix functions ``names`` (bench/colocation_fns/mix.py) as ``prefix-NAME``."""
    import sys

    sys.path.insert(0, str(FUNCTIONS_DIR))
    import mix

    out = []
    with target.client() as c:
        for name in names:
            entrypoint, _payload = mix.MIX[name]
            c.register(name=f"{prefix}-{name}", entrypoint=entrypoint, code_dir=str(code_dir), cores=1,
                       mem_mb=mem_mb, timeout_s=60)
            out.append(f"{prefix}-{name}")
    return out


def function_code_dir(dest: Path, packages: Optional[Path]) -> Path:
    """A code directory with the mix module and links to vendored packages (``packages``,
    ``make bench-venv`` fills .venv-bench/function-packages): functions see nothing else."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(FUNCTIONS_DIR / "mix.py", dest / "mix.py")
    if packages is not None:
        for entry in sorted(packages.iterdir()):
            if entry.name not in ("bin", "__pycache__"):
                (dest / entry.name).symlink_to(entry.resolve())
    return dest


def job_state(target: Target, job_id: int) -> str:
    out = target.run("scontrol", "-o", "show", "job", str(job_id), check=False)
    m = re.search(r"\bJobState=(\S+)", out.stdout)
    return m.group(1) if m else "GONE"


def _wait(what: str, check, timeout_s: float, interval_s: float = 0.2):
    value = poll_until(check, timeout_s, interval_s)
    if not value:
        raise ColocationError(f"timed out after {timeout_s:g} s waiting for {what}")
    return value


def _first_succeeded(target: Target, invoker: "Invoker") -> bool:
    from faas_runtime.states import State

    ids = [i for i, _n, _t in invoker.invoked[:len(invoker.load.names)]]
    if not ids:
        return False
    with target.client() as c:
        return any(row["state"] == State.SUCCEEDED.value for row in c.list(ids=ids, limit=len(ids)))


def _job_output(path: Path) -> dict:
    """start/end/kept/affinity/rc lines the job script prints."""
    text = path.read_text(errors="replace") if path.exists() else ""
    out = {}
    for key in ("kept", "bound", "affinity", "start", "end", "rc"):
        m = re.search(rf"(?:^|\s){key}=(\S*)", text)
        if m:
            out[key] = m.group(1)
    return out


class Invoker(threading.Thread):
    """Invokes the mix at a steady rate (round robin) until ``stop`` is set; keeps the ids."""

    def __init__(self, target: Target, load: FunctionLoad):
        super().__init__(daemon=True)
        self.target, self.load = target, load
        self.stop = threading.Event()
        self.invoked: list = []  # (invocation id, function name, unix time)
        self.rejected: list = []  # (function name, error text)

    def run(self) -> None:
        with self.target.client() as c:
            t0, i = time.monotonic(), 0
            while not self.stop.is_set():
                name = self.load.names[i % len(self.load.names)]
                try:
                    inv = c.invoke(name, json.dumps(self.load.payloads[name]))
                    self.invoked.append((inv, name, time.time()))
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    self.rejected.append((name, f"{type(exc).__name__}: {exc}"))
                i += 1
                self.stop.wait(max(0.0, t0 + i / self.load.rate - time.monotonic()))


def run_once(target: Target, workdir: Path, shape: JobShape, n: int, nb: int, load: Optional[FunctionLoad],
             mpirun_args: str, hpcc_binary: str = "hpcc", timeout_s: float = 1800.0,
             memory: Optional[colocation_memory.MemoryLoad] = None) -> RunResult:
    """One batch job: hpcc with the shape's ranks, and ``load`` invoked beside it, or
    ``memory`` leased from its lend and read in a loop (both None: alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hpccinf.txt").write_text(hpcc.input_file(n, nb, shape.ranks))
    (workdir / "hpccoutf.txt").unlink(missing_ok=True)  # hpcc appends
    script = workdir / "job.sh"
    (workdir / GO_FILE).unlink(missing_ok=True)
    script.write_text(JOB_SCRIPT.format(mpirun_args=mpirun_args, ranks=shape.ranks, hpcc=hpcc_binary, go=GO_FILE))
    out_file = workdir / "job.out"
    out = target.run("sbatch", "--parsable", f"--chdir={workdir}", f"--output={out_file}",
                     f"--job-name=coloc-{shape.name}", *shape.sbatch_args, str(script))
    job_id = int(out.stdout.strip().split(";")[0])
    invoker = reader = None
    lend, go = None, False
    read: dict = {}
    try:
        _wait(f"job {job_id} to start", lambda: job_state(target, job_id) != "PENDING", timeout_s)
        with target.client() as c:
            slot = _wait(f"the lend of job {job_id}", lambda: next(
                (s for s in c.slots() if s["job_id"] == job_id), None), 60)
        lend = {k: slot[k] for k in ("slot_id", "node", "slurm_cpus", "os_cpus", "mem_mb")}
        if load is not None:
            invoker = Invoker(target, load)
            invoker.start()
            _wait("the first function to succeed beside the job", lambda: _first_succeeded(target, invoker), 300, 0.5)
        if memory is not None:  # the memory is leased and filled before hpcc starts
            reader = colocation_memory.MemoryReader(target.env, memory, lend, timeout_s, workdir / "reader.err")
            reader.wait_ready()
        (workdir / GO_FILE).touch()
        go = True
        _wait(f"hpcc of job {job_id} to end", lambda: "end" in _job_output(out_file)
              or job_state(target, job_id) not in ("RUNNING", "CONFIGURING", "COMPLETING"), timeout_s)
    finally:
        if invoker is not None:
            invoker.stop.set()
            invoker.join(30)
        if reader is not None:
            read = reader.stop()
        if not go:  # failed before hpcc was told to start: the job would wait for it minutes
            target.run("scancel", str(job_id), check=False)
        _wait(f"job {job_id} to finish", lambda: job_state(target, job_id) not in
              ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"), 120)
    info = _job_output(out_file)
    if info.get("rc") != "0" or "start" not in info or "end" not in info:
        tail = out_file.read_text(errors="replace")[-2000:] if out_file.exists() else "(no output)"
        raise ColocationError(f"job {job_id} failed (rc={info.get('rc')}):\n{tail}")
    start, end = float(info["start"]), float(info["end"])
    result = RunResult(shape.name, load is not None, job_id, hpcc.parse_file(workdir / "hpccoutf.txt"),
                       end - start, info.get("kept", ""), info.get("affinity", ""), lend)
    if invoker is not None:
        result.functions = function_figures(target, invoker, start, end, lend)
    if memory is not None:
        result.memory = colocation_memory.reader_figures(read, start, end, memory.size, memory.block)
    return result


def _at(iso: str) -> float:
    t = dt.datetime.fromisoformat(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def function_figures(target: Target, invoker: Invoker, start: float, end: float, lend: dict) -> dict:
    """What the functions did in the hpcc window [start, end]: counts, latency and run time
    (from the co-scheduler's state history), the CPUs they ran on, and the useful share of
    the lent core-seconds."""
    from faas_runtime.states import TERMINAL, State

    ids = [i for i, _n, _t in invoker.invoked]
    rows: dict = {}
    with target.client() as c:
        for inv in ids:  # the lend is gone: what did not end is cancelled, not left queued
            if State(c.status(inv)["state"]) not in TERMINAL:
                try:
                    c.cancel(inv)
                except Exception:  # noqa: BLE001 - it ended meanwhile
                    pass
        for inv in ids:
            st = c.status(inv)
            row = {"state": st["state"], "ran_on_cpus": st.get("ran_on_cpus"), "node": st.get("node")}
            if st.get("error"):  # kept with the figures: the cluster that knew why is torn down after
                row["error"] = str(st["error"])[:500]
            hist = {to: _at(at) for to, at, _why in st.get("history", [])}
            queued = min(hist.values()) if hist else None
            if st["state"] == State.SUCCEEDED.value and "RUNNING" in hist:
                value = json.loads(c.result_json(inv))
                row.update(latency_s=hist["SUCCEEDED"] - queued, run_s=hist["SUCCEEDED"] - hist["RUNNING"],
                           run_start=hist["RUNNING"], run_end=hist["SUCCEEDED"], cpu_s=value["cpu_s"],
                           wall_s=value["wall_s"], cpus=value["cpus"])
            rows[inv] = row
    ok = [r for r in rows.values() if "run_s" in r]
    window = end - start
    lent_cores = len(lend["slurm_cpus"])
    lent_os_cpus = sorted(set(lend["os_cpus"]))

    def inside(r):  # the part of a run inside the hpcc window
        return max(0.0, min(r["run_end"], end) - max(r["run_start"], start))

    busy_s = sum(inside(r) for r in ok)
    cpu_s = sum(r["cpu_s"] * inside(r) / r["run_s"] for r in ok if r["run_s"] > 0)
    off_lend = [inv for inv, r in rows.items() if r.get("cpus") and not set(r["cpus"]) <= set(lent_os_cpus)]
    states: dict = {}
    for r in rows.values():
        states[r["state"]] = states.get(r["state"], 0) + 1
    lat = [r["latency_s"] for r in ok]
    return {
        "invoked": len(ids), "rejected": len(invoker.rejected), "states": states,
        "errors": sorted({r["error"] for r in rows.values() if r.get("error")})[:10],
        "succeeded_in_window": sum(1 for r in ok if start <= r["run_end"] <= end),
        "throughput_per_s": sum(1 for r in ok if start <= r["run_end"] <= end) / window,
        "latency_p50_s": hpcc.percentile(lat, 50) if lat else None,
        "latency_p99_s": hpcc.percentile(lat, 99) if lat else None,
        "run_p50_s": hpcc.percentile([r["run_s"] for r in ok], 50) if ok else None,
        "lent_core_s": lent_cores * window, "busy_core_s": busy_s,
        "useful_share": busy_s / (lent_cores * window),
        "lent_os_cpus": lent_os_cpus, "function_cpu_s": cpu_s,
        "useful_share_of_real_cpus": cpu_s / (len(lent_os_cpus) * window),
        "ran_outside_lend": off_lend,
        "per_invocation": [{"id": inv, **{k: v for k, v in r.items() if k not in ("run_start", "run_end")}}
                           for inv, r in sorted(rows.items())],
    }
