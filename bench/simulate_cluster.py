"""A cluster of thousands of nodes, simulated around the real co-scheduler.

    python bench/simulate_cluster.py --nodes 1000 2000 4000 8000 --duration 60 --rate 2000

What is real: the co-scheduler (this tree's daemon, its database, its loop), munge (a
private munged: every agent's HELLO and every client request carries a real credential),
ZeroMQ (one connection per simulated agent, as on a cluster). What is simulated: the
agents (one process per 1,000 nodes, or ``--procs``, each speaking the real agent protocol
for its share of the nodes, heartbeats at the period the co-scheduler sets; an invocation
"runs" for a sampled time, exponential with mean ``--run-mean`` seconds, instead of in an
executor) and the batch jobs. ``--baseline DIR`` runs another tree's co-scheduler beside
this one at each scale. Model, figures and limits: docs/simulate.md.

Lends follow a real trace (``--trace``, an SWF log of ../shared/data/swf): each of the
trace's processors is one node of ``--cores`` cores; the machine is ``nodes / MaxProcs``
copies of the trace's machine, each starting at another point of the log; a job of P
processors holds P nodes from its start to its end; each node it holds lends a sampled
share of its cores (``--lend``) and memory until the job's time limit, and is revoked at
the job's end (``--early-ends`` more a second end early on busy nodes). Trace time runs
``--speed`` times faster than real time. Invocations of a no-op function arrive at
``--rate`` per second (batches of 1,000 through the real client).

Per scale it prints: placement pass (step_schedule) p50/p99 in wall and CPU time, receive
step p99, submit-to-start p50/p99, completed invocations/s, revoke-to-requeue p50/p99 (from an agent's
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
from faas_runtime.queue_client import Unavailable  # noqa: E402
from faas_runtime.states import State  # noqa: E402

SWF = REPO.parent / "shared" / "data" / "swf"
FUNCTIONS = REPO / "tests" / "functions"
# Connections one agent process holds: each is a descriptor, and a process's epoll and
# ZeroMQ's mailbox per socket add more (4,000 nodes in 2 processes ran out: EMFILE).
SOCKETS_PER_PROC = 1000
HELLOS_PER_TURN = 20


# -- the trace -> lends per node ------------------------------------------------------------------


def lend_timeline(trace: Path, nodes: int, duration_s: float, speed: float, seed: int) -> dict[int, list]:
    """For each node, its lends: [(start_s, end_s, limit_s, job_id)] in simulated seconds
    from 0: the job runs from start to end, and its time limit (the lend record's end time,
    what Slurm knows) is at limit_s. A job that ends before its limit revokes a lend that
    placement may have filled (one ending at its limit gets no work it could not finish)."""
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
            limit = (j.start + j.req_time - origin) / speed if j.req_time and j.req_time >= j.end - j.start else end
            for n in held:
                out[base + n].append((start, end, limit, job_id))
            job_id += 1
    return out


# -- simulated agents ----------------------------------------------------------------------------


def run_agents(endpoint: str, munge_socket: str, nodes: list[int], timeline: dict[int, list], cores: int,
               lend: tuple[int, int], run_mean: float, t0: float, stop_file: str, out_file: str, seed: int,
               early_ends_per_s: float = 0.0, cpus: set[int] | None = None) -> None:
    """Agents of ``nodes`` in one process: HELLO with a real credential, LEND/REVOKE as the
    timeline says, every RUN finished after a sampled time, heartbeats at the period the
    co-scheduler sets; and, ``early_ends_per_s`` times a second (Poisson), a job ending
    early on a node that runs work, so revokes hit busy lends."""
    from faas_runtime import protocol as P

    _raise_nofile()
    if cpus:
        os.sched_setaffinity(0, cpus)  # before ZeroMQ starts its threads: they inherit it
    rng = random.Random(seed)
    ctx = zmq.Context(io_threads=1)
    ctx.setsockopt(zmq.MAX_SOCKETS, 65536)
    socks, node_of, welcomed = {}, {}, set()
    lent: dict[int, dict[int, dict]] = {n: {} for n in nodes}  # node -> job -> record
    events: list[tuple[float, int, str, int]] = []  # (at, node, "lend"|"revoke", job)
    ends: dict[int, float] = {}  # job -> its end (wall clock): the lend record's end_time
    for n in nodes:
        for start, end, limit, job in timeline[n]:
            events += [(t0 + start, n, "lend", job), (t0 + end, n, "revoke", job)]
            ends[job] = t0 + limit
    heapq.heapify(events)
    running: dict[int, dict[tuple[int, int], str]] = {n: {} for n in nodes}  # node -> (inv, attempt) -> slot
    done: list[tuple[float, int, int, int]] = []  # (at, node, inv, attempt)
    revokes: list[tuple[str, float]] = []
    seen: dict[int, float] = {}  # node -> sent_at of the newest RUN it read
    period: dict[int, float] = {}  # node -> heartbeat period the co-scheduler set (WELCOME, ACK)
    beats: list[tuple[float, int]] = []  # (when, node) of each welcomed node's next heartbeat
    poller = zmq.Poller()

    def send(n: int, kind: str, **fields) -> None:
        try:
            socks[n].send(P.encode(kind, node=f"s{n}", **fields), zmq.NOBLOCK)
        except zmq.Again:
            pass

    to_hello: list[int] = []  # nodes whose HELLO is still to be sent, a few per loop turn

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
        to_hello.append(n)
    def end_lend(n: int, job: int) -> None:
        if lent[n].pop(job, None) is None:
            return  # ended early already
        revokes.append((f"{job}@s{n}", time.time()))
        send(n, P.REVOKE, job_id=job, reason="the batch job ended")
        for key, slot in list(running[n].items()):
            if slot == f"{job}@s{n}":
                del running[n][key]

    next_stop_check = 0.0
    next_early_end = t0 + (rng.expovariate(early_ends_per_s) if early_ends_per_s else 0.0)
    while True:
        now = time.time()
        if now >= next_stop_check:
            if os.path.exists(stop_file):
                break
            next_stop_check = now + 0.5
        # A HELLO costs a munge credential (milliseconds on a loaded host): the nodes
        # already welcomed keep beating meanwhile, or a slow start looks like dead agents.
        for n in to_hello[:HELLOS_PER_TURN]:
            hello(n)
        del to_hello[:HELLOS_PER_TURN]
        while events and events[0][0] <= now:
            _, n, what, job = heapq.heappop(events)
            if what == "lend":
                k = rng.randint(*lend)
                lent[n][job] = {"version": 1, "state": "lent", "job_id": job, "node": f"s{n}", "uid": 0,
                                "slurm_cpus": list(range(cores - k, cores)), "os_cpus": list(range(cores - k, cores)),
                                "mem_mb": 4096 * k, "end_time": ends[job], "until_min": 0}
                if n in welcomed:
                    send(n, P.LEND, record=lent[n][job])
            else:
                end_lend(n, job)
        if early_ends_per_s and now >= next_early_end:
            next_early_end = now + rng.expovariate(early_ends_per_s)
            busy = [n for n in nodes if running[n]]
            if busy:
                n = rng.choice(busy)
                end_lend(n, int(next(iter(running[n].values())).split("@")[0]))
        finished: dict[int, list[dict]] = {}
        while done and done[0][0] <= now:
            _, n, inv, attempt = heapq.heappop(done)
            if running[n].pop((inv, attempt), None) is not None:
                finished.setdefault(n, []).append({"type": P.RESULT, "invocation_id": inv, "attempt": attempt,
                                                   "outcome": "ok", "value_json": "null", "run_s": run_mean})
        for n, reports in finished.items():  # a turn's reports in one message, as a real agent sends them
            send(n, P.REPORTS, reports=reports)
        # Sleep until the next thing due (polling 1,000 sockets is not free), at most 50 ms.
        due = min([q[0][0] for q in (events, done, beats) if q] + [now + 0.05]) - time.time()
        for s, _ in poller.poll(0 if to_hello else max(0, min(50, int(due * 1000)))):
            n = node_of[s]
            while True:
                try:
                    msg = msgpack.unpackb(s.recv_multipart(zmq.NOBLOCK)[0], raw=False)
                except zmq.Again:
                    break
                kind = msg["type"]
                if kind in (P.WELCOME, P.ACK) and msg.get("heartbeat_s"):
                    period[n] = float(msg["heartbeat_s"])
                if kind == P.WELCOME:
                    if n not in welcomed:  # the first beat at a random point of the period: not all at once
                        heapq.heappush(beats, (time.time() + rng.uniform(0, period.get(n, 1.0)), n))
                    welcomed.add(n)
                    for rec in lent[n].values():
                        send(n, P.LEND, record=rec)
                elif kind == P.ERROR and msg.get("code") in (P.E_UNKNOWN_AGENT, P.E_BUSY):
                    welcomed.discard(n)
                    to_hello.append(n)
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
        now = time.time()
        while beats and beats[0][0] <= now:
            _, n = heapq.heappop(beats)
            if n in welcomed:
                every = period.get(n, 1.0)
                send(n, P.HEARTBEAT, running=[list(k) for k in running[n]], seen=seen.get(n, 0.0), every=every)
                heapq.heappush(beats, (now + every, n))
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


def one_scale(args, nodes: int, munge_socket: str, work: Path, tree: Path = REPO) -> dict:
    """One run of ``nodes`` simulated nodes around the co-scheduler of source tree ``tree``."""
    from faas_runtime.queue_client import Client

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    name = f"{nodes}" if tree == REPO else f"{nodes}-baseline"
    url = args.db or f"sqlite:///{work / f'sim-{name}.db'}"
    env = {**os.environ, "PYTHONPATH": str(tree), "FAAS_RECONCILE_S": "1e9",  # no Slurm: jobs are simulated
           "FAAS_QUOTA_MAX_QUEUED": "100000000"}
    # --pin: the co-scheduler on one CPU, the simulated agents on the others (a site runs
    # the co-scheduler on a host of its own, not beside thousands of agents).
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    daemon_cpus, agent_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)

    def prepare() -> None:  # in the co-scheduler's process, before exec: its threads inherit it
        _raise_nofile()
        if daemon_cpus:
            os.sched_setaffinity(0, daemon_cpus)

    profile = ["-m", "cProfile", "-o", str(args.profile / f"coscheduler-{name}.prof")] if args.profile else []
    daemon = subprocess.Popen([sys.executable, *profile, "-m", "coscheduler.daemon", "--foreground", "--db", url, "--bind",
                               endpoint, "--munge-socket", munge_socket, "--log-file", str(work / f"sim-{name}.log"),
                               "--log-level", "INFO"], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=prepare)
    launched = time.time()
    timeline = lend_timeline(args.trace, nodes, args.duration, args.speed, args.seed)
    t0 = time.time() + 5 + nodes / 2000  # every agent has said HELLO by then
    stop_file = str(work / f"stop-{name}")
    procs, outs = [], []
    n_procs = args.procs or max(2, math.ceil(nodes / SOCKETS_PER_PROC))
    for i in range(n_procs):
        share = list(range(i, nodes, n_procs))
        outs.append(work / f"revokes-{name}-{i}.json")
        p = mp.Process(target=run_agents, args=(endpoint, munge_socket, share, {n: timeline[n] for n in share},
                                                args.cores, tuple(args.lend), args.run_mean, t0, stop_file,
                                                str(outs[-1]), args.seed + i, args.early_ends / n_procs,
                                                agent_cpus))
        p.start()
        procs.append(p)
    submitted = 0
    samples = []
    try:
        with Client(endpoint, munge_socket, timeout_s=120) as c:
            while len(c.agents()) < nodes * 0.99:
                if time.time() > t0 + 60 + nodes / HELLOS_PER_TURN:  # a HELLO is a munge round trip each way
                    raise RuntimeError(f"only {len(c.agents())} of {nodes} agents registered")
                time.sleep(0.5)
            registered_s = time.time() - launched  # 99 % of the agents welcomed
            c.register(name="sim", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=1, mem_mb=64,
                       timeout_s=args.timeout, max_attempts=10)
            time.sleep(max(0.0, t0 - time.time()))
            cpu0, _ = _proc_stats(daemon.pid)
            agents_cpu0 = sum(_proc_stats(p.pid)[0] for p in procs)
            beats0, load = c.stats()["counters"].get("heartbeats", 0), os.getloadavg()[0]
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
            agents_cpu = sum(_proc_stats(p.pid)[0] for p in procs) - agents_cpu0
            stats = c.stats()
            stats["counters"]["heartbeats_in_window"] = stats["counters"].get("heartbeats", 0) - beats0
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
    row = _measure(url, nodes, submitted, start, end, cpu1 - cpu0, max(r for _, r in samples), stats, revokes)
    row.update(tree="baseline" if tree != REPO else "this tree", agent_procs=n_procs, pinned=pin,
               agents_cpu_cores=agents_cpu / (end - start), load_avg=load, registered_s=registered_s)
    return row


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
        # The same passes in CPU time of the loop's thread: what a loaded host does not stretch
        "tick_cpu_p50_ms": steps.get("step_schedule", {}).get("cpu_p50_s", float("nan")) * 1e3,
        "tick_cpu_p99_ms": steps.get("step_schedule", {}).get("cpu_p99_s", float("nan")) * 1e3,
        "receive_cpu_p99_ms": steps.get("step_receive", {}).get("cpu_p99_s", float("nan")) * 1e3,
        "wait_p50_s": _pct(waits, 0.5), "wait_p99_s": _pct(waits, 0.99),
        "completed_per_s": completed / (end - start),
        "revoke_p50_s": _pct(r2r, 0.5), "revoke_p99_s": _pct(r2r, 0.99), "revokes": len(r2r),
        "heartbeats_per_s": stats["counters"]["heartbeats_in_window"] / (end - start),
        "cpu_cores": cpu_s / (end - start), "rss_mb": rss_mb,
        # CPU per invocation completed: what a loaded host does not inflate (wall times it does)
        "cpu_ms_per_done": cpu_s * 1e3 / completed if completed else float("nan"),
        "lost": submitted - sum(states.values()),
    }


def _raise_nofile() -> None:
    """One descriptor per agent connection: as many as the hard limit allows."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


COLUMNS = [("tick_p50_ms", "tick p50 ms"), ("tick_p99_ms", "tick p99 ms"), ("tick_cpu_p50_ms", "tick CPU p50 ms"),
           ("tick_cpu_p99_ms", "tick CPU p99 ms"), ("receive_p99_ms", "receive p99 ms"),
           ("receive_cpu_p99_ms", "receive CPU p99 ms"),
           ("wait_p50_s", "start p50 s"), ("wait_p99_s", "start p99 s"), ("completed_per_s", "done/s"),
           ("revoke_p50_s", "revoke->queue p50 s"), ("revoke_p99_s", "revoke->queue p99 s"),
           ("heartbeats_per_s", "heartbeats/s"), ("cpu_cores", "CPU cores"), ("cpu_ms_per_done", "CPU ms/done"),
           ("rss_mb", "RSS MiB"), ("agents_cpu_cores", "agents' CPU cores"), ("registered_s", "registered s"),
           ("load_avg", "host load"),
           ("lost", "lost")]


def report(rows: list[dict]) -> None:
    print("| nodes | co-scheduler | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for r in rows:
        print(f"| {r['nodes']:,} | {r['tree']} | " + " | ".join(
            f"{r[k]:,.2f}" if isinstance(r[k], float) else f"{r[k]:,}" for k, _ in COLUMNS) + " |")
    ours = [r for r in rows if r["tree"] == "this tree"]
    for a, b in zip(ours, ours[1:]):
        growth = {h: (b[k] / a[k] if a[k] and not math.isnan(a[k]) and not math.isnan(b[k]) else float("nan"))
                  for k, h in COLUMNS if k not in ("lost", "load_avg")}
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
    ap.add_argument("--early-ends", type=float, default=2.0,
                    help="jobs per second that end early on a node running work, besides the trace's own ends "
                         "(a 30-s window of the trace may end no busy lend: revoke-to-requeue needs some)")
    ap.add_argument("--trace", type=Path, default=SWF / "CTC-SP2-1996-3.1-cln.swf.gz")
    ap.add_argument("--procs", type=int, default=None,
                    help=f"processes that play the agents [default: one per {SOCKETS_PER_PROC:,} nodes, at least 2]")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="the co-scheduler on one CPU, the simulated agents on the others [default: on]")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file per scale)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also run, at each scale, the co-scheduler of this source tree (e.g. an earlier commit: "
                         "git archive REV | tar -x -C DIR, plus faas_runtime/_munge*.so): a before/after in one run")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the co-scheduler per scale here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = ap.parse_args()
    from coscheduler.tools.private_munged import private_munged

    work = Path(tempfile.mkdtemp(prefix="faas-sim-"))
    rows = []
    try:
        with private_munged() as munge_socket:
            for nodes in args.nodes:
                # The baseline first, then this tree, at each scale: a loaded host changes
                # less between the two than over the whole run.
                for tree in ([args.baseline] if args.baseline else []) + [REPO]:
                    try:
                        rows.append(one_scale(args, nodes, munge_socket, work, tree))
                    except (RuntimeError, Unavailable) as exc:  # a scale that did not start or hold: say so, go on
                        print(f"{nodes:,} nodes, {'baseline' if tree != REPO else 'this tree'}: {exc}", flush=True)
                        continue
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.keep:
            print(f"kept {work} (logs, databases)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(rows)


if __name__ == "__main__":
    main()
