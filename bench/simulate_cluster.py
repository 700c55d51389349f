"""A cluster of thousands of nodes, simulated around the real co-scheduler.

    python bench/simulate_cluster.py --nodes 1000 2000 4000 8000 --duration 60 --rate 2000

What is real: the co-scheduler (this tree's daemon, its database, its loop), munge (a
private munged: every agent's HELLO and every client request carries a real credential),
ZeroMQ (one connection per simulated agent, as on a cluster). What is simulated: the
agents (``--procs`` processes, each speaking the real agent protocol for its share of the
nodes; an invocation "runs" for a sampled time, exponential with mean ``--run-mean``
seconds, instead of in an executor) and the batch jobs. Model and limits: docs/simulate.md.

Lends follow a real trace (``--trace``, an SWF log of ../shared/data/swf): each of the
trace's processors is one node of ``--cores`` cores; the machine is ``nodes / MaxProcs``
copies of the trace's machine, each starting at another point of the log; a job of P
processors holds P nodes from its start to its end; each node it holds lends a sampled
share of its cores (``--lend``) and memory. Trace time runs ``--speed`` times faster than
real time. Invocations of a no-op function arrive at ``--rate`` per second (batches of
1,000 through the real client).

Per scale it prints: placement pass (step_schedule) p50/p99, receive step p99,
submit-to-start p50/p99, completed invocations/s, revoke-to-requeue p50/p99 (from an agent's
REVOKE to the evicted work queued again, in the database's events), heartbeats handled
per second, the co-scheduler's CPU (cores busy) and peak RSS, whether anything was lost,
and how each grows per doubling of the nodes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from _fast_agents import hello_frame  # noqa: E402
from bench_throughput import free_port  # noqa: E402
from coscheduler import db as D  # noqa: E402
from coscheduler.tools.analysis.swf import SWFReader  # noqa: E402
from faas_runtime.states import State  # noqa: E402

SWF = REPO.parent / "shared" / "data" / "swf"
FUNCTIONS = REPO / "tests" / "functions"


# -- the trace -> lends per node ------------------------------------------------------------------


def lend_timeline(trace: Path, nodes: int, duration_s: float, speed: float, seed: int) -> dict[int, list]:
    """For each node, its lends: [(start_s, end_s, job_id)] in simulated seconds from 0."""
    reader = SWFReader(trace)
    jobs = [j for j in reader if j.start is not None and j.end is not None and j.procs]
    machine = reader.max_procs or max(j.procs for j in jobs)
    jobs.sort(key=lambda j: j.start)
    rng = random.Random(seed)
    window = duration_s * speed
    first, last = jobs[0].start, jobs[-1].start - window
    out: dict[int, list] = {n: [] for n in range(nodes)}
    job_id = 1
    for copy in range(math.ceil(nodes / machine)):
        origin = rng.uniform(first, max(first, last))
        base = copy * machine
        free = list(range(min(machine, nodes - base)))
        ending: list[tuple[float, list[int]]] = []
        for j in jobs:
            if j.end <= origin:
                continue
            if j.start >= origin + window:
                break
            while ending and ending[0][0] <= j.start:
                free.extend(heapq.heappop(ending)[1])
            if j.procs > len(free):
                continue  # this copy of the machine is smaller than the part it keeps
            held = [free.pop() for _ in range(j.procs)]
            heapq.heappush(ending, (j.end, held))
            start, end = max(0.0, (j.start - origin) / speed), (j.end - origin) / speed
            for n in held:
                out[base + n].append((start, end, job_id))
            job_id += 1
    return out


# -- simulated agents ----------------------------------------------------------------------------


def run_agents(endpoint: str, munge_socket: str, nodes: list[int], timeline: dict[int, list], cores: int,
               lend: tuple[int, int], run_mean: float, t0: float, stop_file: str, out_file: str, seed: int) -> None:
    """Agents of ``nodes`` in one process: HELLO with a real credential, LEND/REVOKE as the
    timeline says, every RUN finished after a sampled time, heartbeats every second."""
    from faas_runtime import protocol as P

    _raise_nofile()
    rng = random.Random(seed)
    ctx = zmq.Context(io_threads=1)
    ctx.setsockopt(zmq.MAX_SOCKETS, 65536)
    socks, node_of, welcomed = {}, {}, set()
    lent: dict[int, dict[int, dict]] = {n: {} for n in nodes}  # node -> job -> record
    events: list[tuple[float, int, str, int]] = []  # (at, node, "lend"|"revoke", job)
    ends: dict[int, float] = {}  # job -> its end (wall clock): the lend record's end_time
    for n in nodes:
        for start, end, job in timeline[n]:
            events += [(t0 + start, n, "lend", job), (t0 + end, n, "revoke", job)]
            ends[job] = t0 + end
    heapq.heapify(events)
    running: dict[int, dict[tuple[int, int], str]] = {n: {} for n in nodes}  # node -> (inv, attempt) -> slot
    done: list[tuple[float, int, int, int]] = []  # (at, node, inv, attempt)
    revokes: list[tuple[str, float]] = []
    seen: dict[int, float] = {}  # node -> sent_at of the newest RUN it read
    poller = zmq.Poller()

    def send(n: int, kind: str, **fields) -> None:
        try:
            socks[n].send(P.encode(kind, node=f"s{n}", **fields), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def hello(n: int) -> None:
        try:
            socks[n].send(hello_frame(f"s{n}", munge_socket), zmq.NOBLOCK)
        except zmq.Again:
            pass

    for n in nodes:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.connect(endpoint)
        socks[n], node_of[s] = s, n
        poller.register(s, zmq.POLLIN)
        hello(n)
    next_beat = time.monotonic() + 1.0
    while not os.path.exists(stop_file):
        now = time.time()
        while events and events[0][0] <= now:
            _, n, what, job = heapq.heappop(events)
            if what == "lend":
                k = rng.randint(*lend)
                lent[n][job] = {"version": 1, "state": "lent", "job_id": job, "node": f"s{n}", "uid": 0,
                                "slurm_cpus": list(range(cores - k, cores)), "os_cpus": list(range(cores - k, cores)),
                                "mem_mb": 4096 * k, "end_time": ends[job], "until_min": 0}
                if n in welcomed:
                    send(n, P.LEND, record=lent[n][job])
            elif lent[n].pop(job, None) is not None:
                revokes.append((f"{job}@s{n}", time.time()))
                send(n, P.REVOKE, job_id=job, reason="the batch job ended")
                for key, slot in list(running[n].items()):
                    if slot == f"{job}@s{n}":
                        del running[n][key]
        while done and done[0][0] <= now:
            _, n, inv, attempt = heapq.heappop(done)
            if running[n].pop((inv, attempt), None) is not None:
                send(n, P.RESULT, invocation_id=inv, attempt=attempt, outcome="ok", value_json="null",
                     run_s=run_mean)
        for s, _ in poller.poll(5):
            n = node_of[s]
            while True:
                try:
                    msg = msgpack.unpackb(s.recv_multipart(zmq.NOBLOCK)[0], raw=False)
                except zmq.Again:
                    break
                kind = msg["type"]
                if kind == P.WELCOME:
                    welcomed.add(n)
                    for rec in lent[n].values():
                        send(n, P.LEND, record=rec)
                elif kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
                    welcomed.discard(n)
                    hello(n)
                elif kind in (P.RUN, P.RUNS):
                    reports = []
                    for run in (msg["runs"] if kind == P.RUNS else [msg]):
                        seen[n] = max(seen.get(n, 0.0), run.get("sent_at", 0.0))
                        key = (run["invocation_id"], run["attempt"])
                        job = run["slot_id"].split("@")[0]
                        if job.isdigit() and int(job) in lent[n]:
                            running[n][key] = run["slot_id"]
                            reports.append({"type": P.STARTED, "invocation_id": key[0], "attempt": key[1]})
                            heapq.heappush(done, (time.time() + rng.expovariate(1 / run_mean), n, *key))
                        else:
                            reports.append({"type": P.EVICTED, "invocation_id": key[0], "attempt": key[1],
                                            "reason": "not lent here"})
                    send(n, P.REPORTS, reports=reports)
                elif kind == P.CANCEL:
                    running[n].pop((msg["invocation_id"], msg.get("attempt")), None)
        if time.monotonic() >= next_beat:
            next_beat += 1.0
            for n in nodes:
                if n in welcomed:
                    send(n, P.HEARTBEAT, running=[list(k) for k in running[n]], seen=seen.get(n, 0.0))
    Path(out_file).write_text(json.dumps(revokes))
    for s in socks.values():
        s.close()
    ctx.term()


# -- one scale -----------------------------------------------------------------------------------


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def one_scale(args, nodes: int, munge_socket: str, work: Path) -> dict:
    from faas_runtime.queue_client import Client

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    url = args.db or f"sqlite:///{work / f'sim-{nodes}.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAAS_RECONCILE_S": "1e9",  # no Slurm: jobs are simulated
           "FAAS_QUOTA_MAX_QUEUED": "100000000"}
    profile = ["-m", "cProfile", "-o", str(args.profile / f"coscheduler-{nodes}.prof")] if args.profile else []
    daemon = subprocess.Popen([sys.executable, *profile, "-m", "coscheduler.daemon", "--foreground", "--db", url, "--bind",
                               endpoint, "--munge-socket", munge_socket, "--log-file", str(work / f"sim-{nodes}.log"),
                               "--log-level", "INFO"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_raise_nofile)
    timeline = lend_timeline(args.trace, nodes, args.duration, args.speed, args.seed)
    t0 = time.time() + 5 + nodes / 2000  # every agent has said HELLO by then
    stop_file = str(work / f"stop-{nodes}")
    procs, outs = [], []
    for i in range(args.procs):
        share = list(range(i, nodes, args.procs))
        outs.append(work / f"revokes-{nodes}-{i}.json")
        p = mp.Process(target=run_agents, args=(endpoint, munge_socket, share, {n: timeline[n] for n in share},
                                                args.cores, tuple(args.lend), args.run_mean, t0, stop_file,
                                                str(outs[-1]), args.seed + i))
        p.start()
        procs.append(p)
    submitted = 0
    samples = []
    try:
        with Client(endpoint, munge_socket, timeout_s=120) as c:
            while len(c.agents()) < nodes * 0.99:
                if time.time() > t0 + 60:
                    raise RuntimeError(f"only {len(c.agents())} of {nodes} agents registered")
                time.sleep(0.5)
            c.register(name="sim", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=1, mem_mb=64,
                       timeout_s=args.timeout, max_attempts=10)
            time.sleep(max(0.0, t0 - time.time()))
            cpu0, _ = _proc_stats(daemon.pid)
            start = time.time()
            while time.time() < start + args.duration:
                due = int((time.time() - start) * args.rate) - submitted
                if due >= 1000:
                    c.invoke_batch("sim", ["null"] * 1000, chunk=1000)
                    submitted += 1000
                else:
                    time.sleep(0.05)
                samples.append(_proc_stats(daemon.pid))
            end = time.time()
            cpu1, _ = _proc_stats(daemon.pid)
            stats = c.stats()
            Path(stop_file).touch()
            for p in procs:
                p.join(60)
    finally:
        Path(stop_file).touch()
        for p in procs:
            if p.is_alive():
                p.kill()
        daemon.terminate()
        daemon.wait(30)
    revokes = {slot: at for out in outs if out.exists() for slot, at in json.loads(out.read_text())}
    return _measure(url, nodes, submitted, start, end, cpu1 - cpu0, max(r for _, r in samples), stats, revokes)


def _measure(url, nodes, submitted, start, end, cpu_s, rss_mb, stats, revokes) -> dict:
    db = D.Database(url)
    begin, finish = (dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in (start, end))
    with db.session() as s:
        started = dict(s.execute(D.select(D.InvocationEvent.invocation_id, D.func.min(D.InvocationEvent.at))
                                 .where(D.InvocationEvent.to_state == State.RUNNING.value)
                                 .group_by(D.InvocationEvent.invocation_id)).all())
        queued = dict(s.execute(D.select(D.Invocation.id, D.Invocation.created_at)).all())
        completed = s.scalar(D.select(D.func.count()).where(D.InvocationEvent.to_state == State.SUCCEEDED.value,
                                                            D.InvocationEvent.at >= begin,
                                                            D.InvocationEvent.at <= finish))
        requeued = s.execute(D.select(D.InvocationEvent.reason, D.InvocationEvent.at)
                             .where(D.InvocationEvent.to_state == State.EVICTED.value)).all()
        states = dict(s.execute(D.select(D.Invocation.state, D.func.count()).group_by(D.Invocation.state)).all())
    db.dispose()
    waits = [(started[i] - queued[i]).total_seconds() for i in started if i in queued]
    r2r = []
    for reason, at in requeued:
        slot = (reason or "").removeprefix("slot ").split(" revoked", 1)[0]
        if slot in revokes:
            r2r.append(at.timestamp() - revokes[slot])
    steps = stats["steps"]
    return {
        "nodes": nodes, "submitted": submitted, "in_db": sum(states.values()), "states": states,
        "tick_p50_ms": steps.get("step_schedule", {}).get("p50_s", float("nan")) * 1e3,
        "tick_p99_ms": steps.get("step_schedule", {}).get("p99_s", float("nan")) * 1e3,
        "receive_p99_ms": steps.get("step_receive", {}).get("p99_s", float("nan")) * 1e3,
        "wait_p50_s": _pct(waits, 0.5), "wait_p99_s": _pct(waits, 0.99),
        "completed_per_s": completed / (end - start),
        "revoke_p50_s": _pct(r2r, 0.5), "revoke_p99_s": _pct(r2r, 0.99), "revokes": len(r2r),
        "heartbeats_per_s": stats["counters"].get("heartbeats", 0) / stats["uptime_s"],
        "cpu_cores": cpu_s / (end - start), "rss_mb": rss_mb,
        "lost": submitted - sum(states.values()),
    }


def _raise_nofile() -> None:
    """One descriptor per agent connection: as many as the hard limit allows."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


COLUMNS = [("tick_p50_ms", "tick p50 ms"), ("tick_p99_ms", "tick p99 ms"), ("receive_p99_ms", "receive p99 ms"),
           ("wait_p50_s", "start p50 s"), ("wait_p99_s", "start p99 s"), ("completed_per_s", "done/s"),
           ("revoke_p50_s", "revoke->queue p50 s"), ("revoke_p99_s", "revoke->queue p99 s"),
           ("heartbeats_per_s", "heartbeats/s"), ("cpu_cores", "CPU cores"), ("rss_mb", "RSS MiB"), ("lost", "lost")]


def report(rows: list[dict]) -> None:
    print("| nodes | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for r in rows:
        print(f"| {r['nodes']:,} | " + " | ".join(f"{r[k]:,.2f}" if isinstance(r[k], float) else f"{r[k]:,}"
                                                 for k, _ in COLUMNS) + " |")
    for a, b in zip(rows, rows[1:]):
        growth = {h: (b[k] / a[k] if a[k] and not math.isnan(a[k]) and not math.isnan(b[k]) else float("nan"))
                  for k, h in COLUMNS if k not in ("lost",)}
        print(f"growth {a['nodes']:,} -> {b['nodes']:,}: " + ", ".join(f"{h} x{g:.2f}" for h, g in growth.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    ap.add_argument("--cores", type=int, default=64)
    ap.add_argument("--lend", type=int, nargs=2, default=[4, 16], metavar=("MIN", "MAX"),
                    help="cores a lending node lends, sampled uniformly")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of submission per scale")
    ap.add_argument("--rate", type=float, default=2000.0, help="invocations submitted per second")
    ap.add_argument("--run-mean", type=float, default=0.5, help="mean run time of an invocation (s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="the function's timeout (s): a lend must outlast it")
    ap.add_argument("--speed", type=float, default=60.0, help="trace seconds per real second")
    ap.add_argument("--trace", type=Path, default=SWF / "CTC-SP2-1996-3.1-cln.swf.gz")
    ap.add_argument("--procs", type=int, default=2, help="processes that play the agents")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file per scale)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the co-scheduler per scale here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = ap.parse_args()
    from tests.unit.test_munge import private_munged

    work = Path(tempfile.mkdtemp(prefix="faas-sim-"))
    rows = []
    try:
        with private_munged() as munge_socket:
            for nodes in args.nodes:
                rows.append(one_scale(args, nodes, munge_socket, work))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.keep:
            print(f"kept {work} (logs, databases)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(rows)


if __name__ == "__main__":
    main()
