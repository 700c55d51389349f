"""End-to-end throughput of no-op invocations through the co-scheduler's queue, and
submit-to-start latency on an idle slot, on a real dev cluster (Slurm + munge).

    python bench/bench_throughput.py                 # SQLite and PostgreSQL (if installed)
    python bench/bench_throughput.py -n 20000 --db sqlite

Parts, all in one run:
  baseline   raw ZeroMQ DEALER->ROUTER->DEALER pipeline of N small messages (what the
             transport alone allows on this machine), and the database alone: N
             invocations queued in batches and taken through the three transitions with
             the co-scheduler's own bulk data functions (claim_queued_rows,
             transition_many), one transaction per step as the daemon does.
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
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from coscheduler import db as D  # noqa: E402
from faas_runtime.queue_client import Client  # noqa: E402
from coscheduler.tools.devcluster import DevCluster  # noqa: E402
from faas_runtime.states import State  # noqa: E402
from faas_runtime import protocol as P  # noqa: E402
from _fast_agents import run_fast_agents  # noqa: E402

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


def baseline_db(url: str, n: int) -> float:
    db = D.Database(url)
    db.create_schema()
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
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        raise RuntimeError("PostgreSQL is not installed")
    bindir = Path(initdb[-1]).parent
    data, port = root / "data", free_port()
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(root, "postgres")
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "faas"], check=True,
                   capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "pg.log"), "-o",
                    f"-k {root} -p {port} -c listen_addresses='' -c synchronous_commit=off", "start"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "createdb"), "-h", str(root), "-p", str(port), "-U", "faas", "faas"],
                   check=True, capture_output=True)

    def stop():
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)

    return f"postgresql+psycopg://faas@/faas?host={root}&port={port}", stop


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
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"not done after 600 s: {counts}")
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
        elif not (str(root) in cmd or cwd.startswith(str(root))):
            continue
        else:
            kind = ("co-scheduler" if "coscheduler.daemon" in cmd else "agents" if "faas_runtime.agent" in cmd
                    else "executors" if "faas_runtime.executor" in cmd else None)
        if kind:
            out[kind] = out.get(kind, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


def real_agent_run(cluster: DevCluster, n: int, lat_n: int, cores: int, pg_data: Optional[Path] = None) -> dict:
    """The dev cluster's own co-scheduler, agents and warm executors on ``cores`` lent cores
    of one job: ``n`` no-ops submitted at once, after a warm-up that lets the co-scheduler
    learn the function's run time (dispatch-ahead)."""
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
        elapsed = (last - wall0).total_seconds()
        lat.sort()
        return {"n": n, "rate": n / elapsed, "elapsed": elapsed, "cpu_us": {k: v / n * 1e6 for k, v in cpu.items()},
                "p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3}
    finally:
        subprocess.run(["scancel", str(job)], env=env, capture_output=True)


def print_real(name: str, r: dict, cores: int, lat_n: int) -> None:
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["cpu_us"].items()))
    print(f"real agents {name:<10}: {r['n']} no-ops on {cores} lent cores (warm executors, dispatch-ahead), "
          f"sustained end to end {r['rate']:,.0f}/s ({r['elapsed']:.1f} s); CPU us per invocation: {cpu}; "
          f"submit-to-start on an idle slot p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms ({lat_n} samples)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="invocations in the queue runs")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--real-n", type=int, default=10_000, help="invocations in the real-agent runs")
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--cores", type=int, default=4, help="lent cores of the real-agent runs' job")
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
            print(f"baseline {name} data functions alone (queue + 3 transitions, batches of 1000): "
                  f"{baseline_db(base_url, min(args.n, 10_000)):,.0f} invocations/s")
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
        for name, url in urls.items():
            r = queue_run(cluster, url, args.n, work, jobs)
            print(f"queue {name:<10}: {r['n']} no-ops, submitted at {r['submit_rate']:,.0f}/s, "
                  f"sustained end to end {r['sustained']:,.0f}/s ({r['elapsed']:.1f} s)")
        subprocess.run(["scancel", *map(str, jobs)], env=env, capture_output=True)
        for name, url in urls.items():
            if name == "sqlite":
                r = real_agent_run(cluster, args.real_n, args.latency_n, args.cores)
            else:  # a second dev cluster whose co-scheduler keeps its queue in PostgreSQL
                with D.Database(url).engine.begin() as conn:
                    conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                pg_cluster = DevCluster(work / "cluster-pg", db_url=url)
                try:
                    pg_cluster.up(timeout_s=120)
                    r = real_agent_run(pg_cluster, args.real_n, args.latency_n, args.cores, pg_root / "data")
                finally:
                    pg_cluster.down()
            print_real(name, r, args.cores, args.latency_n)
    finally:
        cluster.down()
        for stop in stops:
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
