"""End-to-end throughput of no-op invocations through the co-scheduler's queue, and
submit-to-start latency on an idle slot, on a real dev cluster (Slurm + munge).

    python bench/bench_throughput.py                 # SQLite and PostgreSQL (if installed)
    python bench/bench_throughput.py -n 20000 --db sqlite
    .venv-bench/bin/python bench/bench_throughput.py -n 5000 --real-n 5000   # with Parsl (make bench-venv)

Parts, all in one run:
  baseline   raw ZeroMQ DEALER->ROUTER->DEALER pipeline of N small messages (what the
             transport alone allows on this machine), and the database alone: N
             invocations queued in batches and taken through the three transitions with
             the co-scheduler's own bulk data functions (claim_queued_rows,
             transition_many), one transaction per step as the daemon does; on SQLite
             also without the state guard trigger (what it costs; never so in the product).
  queue      a second co-scheduler (SQLite file or a private PostgreSQL, run with
             synchronous_commit=off as a throughput-tuned site would) with munge from
             the dev cluster; four agents that answer RUN at once (no process is spawned:
             this is the queue, the database and the protocol), lending 16 cores each for
             real running Slurm jobs; N invocations submitted with invoke --batch
             (1000 per request); sustained = N / (last SUCCEEDED - first submit), the
             last SUCCEEDED read from the invocations' history (the client polls for the
             end every 0.2 s).
  real agents the dev cluster's own co-scheduler, agents and warm executors (in their
             cgroups, pinned to the lent CPUs), with SQLite and with PostgreSQL (a second
             dev cluster): N no-ops on 4 lent cores of one job after a warm-up (so the
             co-scheduler dispatches ahead), sustained = N / (last SUCCEEDED - submit),
             with the CPU each part spent per invocation (the PostgreSQL server's too);
             and submit-to-start latency
             (QUEUED -> RUNNING in the invocation's history) of 30 invocations submitted
             one at a time on an idle slot.
  cli        on the same job, after the real-agent run: `submit-function invoke noop
             --batch FILE --wait` of --cli-n no-ops, timed from the command's start to its
             exit (Python start, checks, queueing, waiting; real Slurm, munge, cgroups).
  before     the real-agent runs again with the co-scheduler, agents and executors of
             ``--before`` (a git worktree, bench/_trees.py): CPU per invocation per process
             before and after, in one run.
  peers      the same no-op workload on Python's ProcessPoolExecutor and Parsl's
             HighThroughputExecutor, 4 workers each (bench/_peers.py), and the ratios the
             scale issue sets: real agents / ProcessPoolExecutor (SQLite >= 0.5,
             PostgreSQL >= 0.3) and CLI / Parsl HTEX (>= 4).
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from coscheduler import db as D  # noqa: E402
from faas_runtime.queue_client import Client  # noqa: E402
from coscheduler.tools.devcluster import DevCluster  # noqa: E402
from coscheduler.tools.private_postgres import private_postgres  # noqa: E402
from faas_runtime.states import State  # noqa: E402
from faas_runtime import protocol as P  # noqa: E402
from _fast_agents import run_fast_agents  # noqa: E402
from _peers import parsl_htex_rate, process_pool_rate  # noqa: E402
from _trees import TreeCluster, checkout  # noqa: E402

FUNCTIONS = Path(__file__).resolve().parent.parent / "tests" / "functions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- baselines -----------------------------------------------------------------------------


def _echo_router(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    sock = P.configure(ctx.socket(zmq.ROUTER))
    sock.bind(endpoint)
    for _ in range(n):
        ident, frame = sock.recv_multipart()
        sock.send_multipart([ident, frame])
    time.sleep(0.5)
    sock.close()
    ctx.term()


def baseline_zmq(n: int) -> float:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = mp.Process(target=_echo_router, args=(endpoint, n))
    proc.start()
    ctx = zmq.Context()
    sock = P.configure(ctx.socket(zmq.DEALER))
    sock.connect(endpoint)
    time.sleep(0.3)
    t0 = time.perf_counter()
    frame = P.encode(P.RESULT, node="x", invocation_id=1, attempt=1, outcome="ok", value_json="null")
    sent = got = 0
    while got < n:
        while sent < n and sent - got < 1000:
            sock.send(frame)
            sent += 1
        sock.recv()
        got += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    ctx.term()
    proc.join()
    return n / elapsed


def baseline_db(url: str, n: int, guard: bool = True) -> float:
    """Invocations/s of the data functions alone. ``guard=False`` (SQLite): without the
    trigger that refuses illegal state changes, to show what it costs (any trigger makes
    SQLite update in two passes); the product always has it (docs/architecture.md)."""
    db = D.Database(url)
    db.create_schema()
    if not guard:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER invocation_state_guard")
    with db.session() as s:
        fn = D.Function(name="bench-db", owner_uid=1, owner_gid=1, entrypoint="m:f", code_dir="/", cores=1,
                        mem_mb=1, timeout_s=60, max_attempts=1)
        s.add(fn)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        with db.session() as s:
            fn = s.get(D.Function, fn.id)
            ids = D.add_invocations(s, fn, ["null"] * min(1000, n - start), 1)
        with db.session(write=True) as s:
            D.transition_many(s, [D.Change(r.id, State.QUEUED, State.DISPATCHED, D.utcnow(), None,
                                           {"attempts": r.attempts + 1}) for r in D.claim_queued_rows(s, 1000, 1000)])
        with db.session(write=True) as s:
            changes = []
            for i in ids:
                changes.append(D.Change(i, State.DISPATCHED, State.RUNNING, D.utcnow()))
                changes.append(D.Change(i, State.RUNNING, State.SUCCEEDED, D.utcnow(), None, {"result": "null"}))
            D.transition_many(s, changes)
    rate = n / (time.perf_counter() - t0)
    db.dispose()
    return rate


def start_postgres(root: Path) -> tuple[str, callable]:
    """A private server (coscheduler.tools.private_postgres) that does not wait for its disk
    on commit, as a throughput-tuned site would; returns its URL and the call that stops it."""
    stack = ExitStack()
    url = stack.enter_context(private_postgres(root, ("synchronous_commit=off",)))
    return url, stack.close


QUEUE_RUN_TIMEOUT_S = 600


def wait_running(env: dict, job_ids: list[int], timeout_s: float = 120.0) -> None:
    """Until Slurm runs every job: a lend for a job still PENDING is revoked by the first
    reconciliation (the plugin only lends at launch), and the fast agents lend at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", ",".join(map(str, job_ids))], env=env,
                             capture_output=True, text=True)
        states = out.stdout.split()
        if len(states) == len(job_ids) and set(states) == {"RUNNING"}:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs {job_ids} not all running after {timeout_s:g} s: {states}")
        time.sleep(0.2)


def queue_run(cluster: DevCluster, url: str, n: int, workdir: Path, job_ids: list[int]) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "SLURM_CONF": str(cluster.slurm_conf)}
    log = workdir / f"coscheduler-{url.split(':')[0]}.log"
    daemon = subprocess.Popen([sys.executable, "-m", "coscheduler.daemon", "--foreground", "--db", url, "--bind",
                               endpoint, "--munge-socket", str(cluster.munge_socket), "--slurm-backend", "cli",
                               "--log-file", str(log), "--log-level", "WARNING"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop_file = str(workdir / "stop-agents")
    Path(stop_file).unlink(missing_ok=True)
    agents = mp.Process(target=run_fast_agents, args=(endpoint, [(f"q{i}", j) for i, j in enumerate(job_ids)], 16,
                                                      stop_file, str(cluster.munge_socket)))
    agents.start()
    try:
        with Client(endpoint, str(cluster.munge_socket), timeout_s=60) as c:
            deadline = time.monotonic() + 30
            while len(c.agents()) < len(job_ids) and time.monotonic() < deadline:
                time.sleep(0.1)
            c.register(name="noop", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=1, mem_mb=1,
                       timeout_s=60, max_attempts=3)
            time.sleep(0.5)
            t0, wall0 = time.perf_counter(), D.utcnow()
            ids = c.invoke_batch("noop", ["null"] * n, chunk=1000)
            t_submitted = time.perf_counter() - t0
            while True:
                counts = c.function("noop")["invocations"]
                if counts.get("SUCCEEDED", 0) >= n:
                    break
                if time.perf_counter() - t0 > QUEUE_RUN_TIMEOUT_S:
                    raise RuntimeError(f"not done after {QUEUE_RUN_TIMEOUT_S} s: {counts}")
                time.sleep(0.2)
            assert len(ids) == n
        db = D.Database(url)
        with db.session() as s:
            last = s.scalar(D.select(D.func.max(D.InvocationEvent.at)).where(
                D.InvocationEvent.to_state == State.SUCCEEDED.value))
        db.dispose()
        elapsed = (last - wall0).total_seconds()
        return {"n": n, "submit_rate": n / t_submitted, "sustained": n / elapsed, "elapsed": elapsed}
    finally:
        Path(stop_file).touch()
        agents.join(10)
        daemon.terminate()
        daemon.wait(20)


def _cpu_seconds(root: Path, pg_data: Optional[Path] = None) -> dict[str, float]:
    """CPU time (user + system) so far of the cluster's co-scheduler, agents and executors,
    and of the PostgreSQL server whose data directory is ``pg_data`` (its postmaster and
    backends)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = None
    if pg_data is not None:
        postmaster = (pg_data / "postmaster.pid").read_text().split()[0]
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")  # executors run in their run dir below the agent's
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if postmaster is not None and postmaster in (proc.name, stat[1]):  # stat[1]: the parent pid
            kind = "database server"
        elif not (f"{root}/" in cmd or f"{cwd}/".startswith(f"{root}/")):
            continue
        else:
            kind = ("co-scheduler" if "coscheduler.daemon" in cmd else "agents" if "faas_runtime.agent" in cmd
                    else "executors" if "faas_runtime.executor" in cmd else None)
        if kind:
            out[kind] = out.get(kind, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


def cli_batch_rate(cluster: DevCluster, n: int) -> float:
    """``submit-function invoke noop --batch FILE --wait`` of ``n`` no-ops: invocations/s
    from the command's start to its exit."""
    batch = cluster.root / "cli-batch.jsonl"
    batch.write_text("null\n" * n)
    t0 = time.perf_counter()
    out = subprocess.run(["submit-function", "invoke", "noop", "--batch", str(batch), "--wait"],
                         env=cluster.client_env(), capture_output=True, text=True, timeout=900, cwd="/tmp")
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or out.stdout.split() != ["SUCCEEDED", str(n)]:
        raise RuntimeError(f"invoke --batch --wait: {out.stdout[-500:]} {out.stderr[-2000:]}")
    return n / elapsed


def real_agent_run(cluster: DevCluster, n: int, lat_n: int, cores: int, pg_data: Optional[Path] = None,
                   cli_n: int = 0) -> dict:
    """The dev cluster's own co-scheduler, agents and warm executors on ``cores`` lent cores
    of one job: ``n`` no-ops submitted at once, after a warm-up that lets the co-scheduler
    learn the function's run time (dispatch-ahead); then, if ``cli_n``, the CLI's batch."""
    env = cluster.client_env()
    out = subprocess.run(["sbatch", "--parsable", "-N1", "-c8", "--output=/dev/null", f"--faas-share=cores={cores}",
                          "--wrap", "sleep 900"], env=env, capture_output=True, text=True, check=True, cwd="/tmp")
    job = int(out.stdout.strip().split(";")[0])
    try:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=60) as c:
            deadline = time.monotonic() + 60
            while not any(s["job_id"] == job and s["state"] == "ACTIVE" for s in c.slots()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the job's slot never appeared")
                time.sleep(0.1)
            c.register(name="noop", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=1, mem_mb=64,
                       timeout_s=60, max_attempts=3)
            # latency on an idle slot: one at a time
            lat = []
            for _ in range(lat_n):
                inv = c.invoke("noop", "null")
                st = c.wait(inv, timeout_s=60, poll_s=0.02)
                at = {state: dt.datetime.fromisoformat(t) for state, t, _ in st["history"]}
                lat.append((at["RUNNING"] - at["QUEUED"]).total_seconds())
            c.wait_many(c.invoke_batch("noop", ["null"] * 100), timeout_s=120)  # warm-up
            cpu0 = _cpu_seconds(cluster.root, pg_data)
            wall0 = D.utcnow()
            ids = c.invoke_batch("noop", ["null"] * n)
            rows = c.wait_many(ids, timeout_s=900, poll_s=0.5)
            cpu = {k: v - cpu0.get(k, 0.0) for k, v in _cpu_seconds(cluster.root, pg_data).items()}
            assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
        db = D.Database(cluster.db_url)
        with db.session() as s:
            last = s.scalar(D.select(D.func.max(D.InvocationEvent.at)).where(
                D.InvocationEvent.to_state == State.SUCCEEDED.value, D.InvocationEvent.invocation_id >= min(ids)))
        db.dispose()
        cli = cli_batch_rate(cluster, cli_n) if cli_n else None  # on the same warm executors
        elapsed = (last - wall0).total_seconds()
        lat.sort()
        return {"n": n, "rate": n / elapsed, "elapsed": elapsed, "cpu_us": {k: v / n * 1e6 for k, v in cpu.items()},
                "cli_rate": cli,
                "p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3}
    finally:
        subprocess.run(["scancel", str(job)], env=env, capture_output=True)


def print_real(name: str, r: dict, cores: int, lat_n: int) -> None:
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["cpu_us"].items()))
    cli = f"; CLI invoke --batch --wait {r['cli_rate']:,.0f}/s" if r.get("cli_rate") else ""
    print(f"real agents {name:<10}: {r['n']} no-ops on {cores} lent cores (warm executors, dispatch-ahead), "
          f"sustained end to end {r['rate']:,.0f}/s ({r['elapsed']:.1f} s); CPU us per invocation: {cpu}; "
          f"submit-to-start on an idle slot p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms ({lat_n} samples){cli}")


# What the scale issue asks of the real-agent path, as ratios to peers measured in the same run.
TARGETS = {"sqlite": 0.5, "postgresql": 0.3}
CLI_OVER_PARSL = 4.0


def print_summary(real: dict[tuple[str, str], dict], before: str) -> None:
    """The ratios to the peers measured beside each run, and CPU per invocation per
    process before and after."""
    for (name, when), r in sorted(real.items()):
        target = f" (target >= {TARGETS[name]})" if when == "after" else ""
        print(f"ratio real agents {name} {when} / ProcessPoolExecutor: {r['rate']:,.0f} / {r['ppe']:,.0f} = "
              f"{r['rate'] / r['ppe']:.2f}{target}")
    after = real.get(("sqlite", "after"), {})
    if after.get("cli_rate") and after.get("htex"):
        print(f"ratio CLI invoke --batch --wait (SQLite) / Parsl HTEX: {after['cli_rate']:,.0f} / {after['htex']:,.0f} "
              f"= {after['cli_rate'] / after['htex']:.2f} (target >= {CLI_OVER_PARSL:g})")
    elif after:
        print("Parsl HTEX: not installed (run with .venv-bench/bin/python; make bench-venv)")
    for name in TARGETS:
        if (name, "before") in real and (name, "after") in real:
            b, a = real[(name, "before")]["cpu_us"], real[(name, "after")]["cpu_us"]
            rows = [f"{k} {b.get(k, 0):.0f} -> {a.get(k, 0):.0f}" for k in sorted(set(a) | set(b))]
            print(f"CPU us per invocation, {name}, before ({before}) -> after: {'; '.join(rows)}; total "
                  f"{sum(b.values()):.0f} -> {sum(a.values()):.0f}")


def real_runs(work: Path, cluster: DevCluster, urls: dict[str, str], before: Optional[Path],
              args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """The real-agent runs of this tree ("after", with the CLI's batch) and of ``before``,
    per database; ``cluster`` is this tree's SQLite cluster, already up. The machine's load
    changes (a shared machine), so the peers run right beside the runs they are compared
    with: a ProcessPoolExecutor before each run, Parsl's HTEX after the CLI's batch."""
    real: dict[tuple[str, str], dict] = {}
    for name, url in urls.items():
        for when, tree in (("after", None), ("before", before)):
            if when == "before" and tree is None:
                continue
            pg_data = work / "pg" / "data" if name == "postgresql" else None
            if pg_data is not None:  # each cluster starts on an empty PostgreSQL queue
                with D.Database(url).engine.begin() as conn:
                    conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            db_url = url if pg_data is not None else None
            if tree is None and pg_data is None:
                c = cluster
            elif tree is None:
                c = DevCluster(work / "cluster-pg", db_url=db_url)
            else:
                c = TreeCluster(work / f"{when}-{name}", tree, db_url=db_url)
            try:
                if c is not cluster:
                    c.up(timeout_s=120)
                ppe = process_pool_rate(args.real_n)
                r = real_agent_run(c, args.real_n, args.latency_n, args.cores, pg_data,
                                   cli_n=args.cli_n if when == "after" else 0)
                r["ppe"] = ppe
                if (name, when) == ("sqlite", "after"):
                    r["htex"] = parsl_htex_rate(args.real_n)
            finally:
                if c is not cluster:
                    c.down()
            print_real(f"{name} {when}", r, args.cores, args.latency_n)
            htex = f", Parsl HTEX {r['htex']:,.0f}/s" if r.get("htex") else ""
            print(f"  beside it, same no-op workload, 4 workers: ProcessPoolExecutor {r['ppe']:,.0f}/s{htex}")
            real[(name, when)] = r
    return real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="invocations in the queue runs")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--real-n", type=int, default=10_000, help="invocations in the real-agent runs")
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--cores", type=int, default=4, help="lent cores of the real-agent runs' job")
    ap.add_argument("--cli-n", type=int, default=2000, help="invocations of the CLI's invoke --batch --wait (0: none)")
    ap.add_argument("--before", default="33e4967",  # the tree before the cuts docs/simulate.md reports
                    help="the revision whose real-agent runs are the 'before' column ('': none)")
    ap.add_argument("--no-queue", dest="queue", action="store_false", help="skip the stand-in agents' queue runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-bench-"))
    work.chmod(0o755)
    cluster = DevCluster(work / "cluster")
    stops = []
    try:
        print(f"machine: {os.cpu_count()} CPUs; N = {args.n}")
        print(f"baseline zmq pipeline (DEALER->ROUTER->DEALER, 1000 in flight): {baseline_zmq(args.n):,.0f} msg/s")
        urls = {}
        if args.db in ("sqlite", "both"):
            urls["sqlite"] = f"sqlite:///{work / 'queue.db'}"
        if args.db in ("postgresql", "both"):
            try:
                pg_root = work / "pg"
                pg_root.mkdir()
                urls["postgresql"], stop = start_postgres(pg_root)
                stops.append(stop)
            except Exception as exc:  # noqa: BLE001 - reported, the rest still runs
                print(f"postgresql: skipped ({exc})")
        for name, url in urls.items():
            base_url = url if name == "postgresql" else f"sqlite:///{work / 'baseline.db'}"
            guarded = baseline_db(base_url, min(args.n, 10_000))
            print(f"baseline {name} data functions alone (queue + 3 transitions, batches of 1000): "
                  f"{guarded:,.0f} invocations/s")
            if name == "sqlite":
                bare = baseline_db(f"sqlite:///{work / 'baseline-unguarded.db'}", min(args.n, 10_000), guard=False)
                print(f"  the same without the state guard trigger: {bare:,.0f}/s ({bare / guarded:.2f}x)")
            if name == "postgresql":
                with D.Database(url).engine.begin() as conn:
                    conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        cluster.up(timeout_s=120)
        env = cluster.client_env()
        jobs = []
        for _ in range(4):  # real running jobs the fast agents lend for (reconciliation keeps them)
            out = subprocess.run(["sbatch", "--parsable", "-c1", "--mem=100M", "--output=/dev/null",
                                  "--faas-share=no", "--wrap", "sleep 900"], env=env, capture_output=True,
                                 text=True, check=True, cwd="/tmp")
            jobs.append(int(out.stdout.strip().split(";")[0]))
        wait_running(env, jobs)
        for name, url in (urls if args.queue else {}).items():
            r = queue_run(cluster, url, args.n, work, jobs)
            print(f"queue {name:<10}: {r['n']} no-ops, submitted at {r['submit_rate']:,.0f}/s, "
                  f"sustained end to end {r['sustained']:,.0f}/s ({r['elapsed']:.1f} s)")
        subprocess.run(["scancel", *map(str, jobs)], env=env, capture_output=True)
        with checkout(args.before, work / "before") if args.before else nullcontext() as before:
            real = real_runs(work, cluster, urls, before, args)
        print_summary(real, args.before)
    finally:
        cluster.down()
        for stop in stops:
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
