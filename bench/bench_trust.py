"""What trust costs, and what the floods of the trust issue do to the loop, in one run.

    python bench/bench_trust.py [-n 20000] [--big-n 1000000] [--before 33357db]

Parts (SQLite, a real dev cluster for munge and Slurm, stand-in agents that answer RUN at
once so the queue and the protocol are what is measured; bench/_fast_agents.py):

  cost      queue throughput (N no-ops submitted in batches of 1,000, sustained = N /
            (last SUCCEEDED - first submit)) of this tree's co-scheduler (munge-authenticated
            agents and clients, MACed orders, acknowledged reports) against the last release
            before agents authenticated (``--before``, checked out in a git worktree; its
            agents trusted by network placement, its clients' credentials decoded by forking
            unmunge), interleaved, two runs each. Target: now >= 0.9 x before.
  floods    the loop's ping round trip (p50/p99/max, a ping every 5 ms from its own
            connection) idle and while each attack of the issue runs against this tree's
            co-scheduler: 8,000 bogus credentials; 256 MiB frames; 4-frame messages; 10,000
            forged agent messages; a batch of ``--big-n`` invocations; the cancel of all of
            them. Target: p99 <= 100 ms under each. The bogus-credential flood also runs
            against ``--before`` (fewer: its unmunge forks are slow) for comparison.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from _fast_agents import run_fast_agents  # noqa: E402
from _trees import OWN_TREE, checkout, module_argv  # noqa: E402
from bench_throughput import free_port  # noqa: E402
from coscheduler import db as D  # noqa: E402
from coscheduler.tools.devcluster import DevCluster  # noqa: E402
from faas_runtime import munge  # noqa: E402
from faas_runtime.states import State  # noqa: E402

FUNCTIONS = REPO / "tests" / "functions"
# The driver runs with the tree's own client (the old one forks `munge` per request).
DRIVER = OWN_TREE + r"""
import json, sys, time, datetime as dt
try:
    from faas_runtime.queue_client import Client
except ImportError:
    from coscheduler.client import Client
endpoint, munge_socket, code, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Client(endpoint, munge_socket, timeout_s=120) as c:
    deadline = time.monotonic() + 30
    while len(c.agents()) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    c.register(name="noop", entrypoint="probe:where", code_dir=code, cores=1, mem_mb=1, timeout_s=60, max_attempts=3)
    t0 = dt.datetime.now(dt.timezone.utc).isoformat()
    c.invoke_batch("noop", ["null"] * n, chunk=1000)
    while c.function("noop")["invocations"].get("SUCCEEDED", 0) < n:
        time.sleep(0.2)
print(json.dumps({"t0": t0}))
"""


class Daemon:
    """A co-scheduler of one tree (``root``) on a fresh SQLite queue, with stand-in agents."""

    def __init__(self, cluster: DevCluster, root: Path, work: Path, jobs: list[int], legacy: bool,
                 env: Optional[dict] = None):
        self.cluster, self.root, self.legacy = cluster, root, legacy
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.db = work / f"queue-{time.monotonic_ns()}.db"
        self.env = {**os.environ, "SLURM_CONF": str(cluster.slurm_conf), "PYTHONPATH": str(root), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *module_argv("coscheduler.daemon"), "--foreground", "--db", f"sqlite:///{self.db}", "--bind",
             self.endpoint, "--munge-socket", str(cluster.munge_socket), "--slurm-backend", "cli", "--log-file",
             str(work / f"{self.db.stem}.log"), "--log-level", "WARNING"],
            env=self.env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stop_file = str(work / f"{self.db.stem}.stop")
        self.agents = mp.Process(target=run_fast_agents, args=(self.endpoint, [(f"q{i}", j) for i, j in enumerate(jobs)],
                                                               16, self.stop_file, str(cluster.munge_socket), legacy))
        self.agents.start()

    def drive(self, n: int) -> float:
        """Submit and finish ``n`` no-ops; the sustained rate (invocations/s)."""
        out = subprocess.run([sys.executable, "-c", DRIVER, self.endpoint, str(self.cluster.munge_socket),
                              str(FUNCTIONS), str(n)], env=self.env, cwd=self.root, capture_output=True, text=True,
                             timeout=1200)
        if out.returncode != 0:
            raise RuntimeError(f"the driver failed against {self.root}: {out.stderr[-2000:]}")
        t0 = dt.datetime.fromisoformat(json.loads(out.stdout)["t0"])
        db = D.Database(f"sqlite:///{self.db}")
        with db.session() as s:
            last = s.scalar(D.select(D.func.max(D.InvocationEvent.at)).where(
                D.InvocationEvent.to_state == State.SUCCEEDED.value))
        db.dispose()
        return n / (last - t0).total_seconds()

    def close(self) -> None:
        Path(self.stop_file).touch()
        self.agents.join(10)
        self.proc.terminate()
        self.proc.wait(20)


# -- the loop's ping under load --------------------------------------------------------------------


class Pinger:
    """PING every ``every_s`` from its own connection; round trips in seconds."""

    def __init__(self, endpoint: str, every_s: float = 0.005):
        self.endpoint, self.every_s = endpoint, every_s
        self.rtts: list[float] = []
        self.lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Pinger":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.perf_counter()
            sock.send(msgpack.packb({"v": 1, "type": "ping", "rid": n}))
            while True:
                if not sock.poll(10_000):
                    self.lost += 1
                    break
                if msgpack.unpackb(sock.recv(), raw=False).get("rid") == n:
                    self.rtts.append(time.perf_counter() - t0)
                    break
            time.sleep(self.every_s)
        sock.close()

    def summary(self) -> str:
        if not self.rtts:
            return "no answer"
        q = sorted(self.rtts)
        p99 = q[min(len(q) - 1, int(0.99 * len(q)))]
        return (f"p50 {statistics.median(q) * 1e3:6.2f} ms  p99 {p99 * 1e3:7.2f} ms  max {q[-1] * 1e3:7.2f} ms  "
                f"({len(q)} pings{f', {self.lost} lost' if self.lost else ''})")


def _flood(endpoint: str, frames: list[list[bytes]], replies: int) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for parts in frames:
        sock.send_multipart(parts)
    got, deadline = 0, time.monotonic() + 300
    while got < replies and time.monotonic() < deadline:
        if sock.poll(1000):
            sock.recv_multipart()
            got += 1
    sock.close()


def bogus_credentials(endpoint: str, munge_socket: str, n: int) -> None:
    bogus = munge.encode(b"x", munge_socket)[:-8] + "AAAAAAA="
    _flood(endpoint, [[msgpack.packb({"v": 1, "type": "list", "rid": i, "cred": bogus})] for i in range(n)], n)


def big_frames(endpoint: str, mib: int, n: int) -> None:
    for _ in range(n):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(b"\0" * (mib << 20))
        time.sleep(0.5)
        sock.close()


def four_frames(endpoint: str, n: int) -> None:
    ping = msgpack.packb({"v": 1, "type": "ping"})
    _flood(endpoint, [[b"\x00abcd", b"\x00efgh", ping]] * n, 0)


def forged_agent(endpoint: str, n: int) -> None:
    _flood(endpoint, [[msgpack.packb({"v": 1, "type": "result", "node": "n1", "invocation_id": i, "attempt": 1,
                                      "outcome": "ok", "value_json": "1"})] for i in range(1, n + 1)], n)


def measured(endpoint: str, what: str, attack: Callable[[], object]) -> None:
    with Pinger(endpoint) as p:
        time.sleep(0.2)
        t0 = time.perf_counter()
        attack()
        took = time.perf_counter() - t0
    print(f"  {what:<44} ({took:6.1f} s)  ping {p.summary()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="invocations per throughput run")
    ap.add_argument("--big-n", type=int, default=1_000_000, help="invocations of the big batch and its cancel")
    ap.add_argument("--before", default="33357db", help="the last release before agents authenticated")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-bench-trust-"))
    work.chmod(0o755)
    cluster = DevCluster(work / "cluster")
    trees = ExitStack()
    before: Optional[Path] = trees.enter_context(checkout(args.before, work / "before"))
    try:
        cluster.up(timeout_s=120)
        env = cluster.client_env()
        jobs = [int(subprocess.run(["sbatch", "--parsable", "-c1", "--mem=100M", "--output=/dev/null",
                                    "--faas-share=no", "--wrap", "sleep 3600"], env=env, capture_output=True,
                                   text=True, check=True, cwd="/tmp").stdout.split(";")[0]) for _ in range(4)]
        print(f"machine: {os.cpu_count()} CPUs; N = {args.n}")
        if before is not None:
            rates: dict[str, list[float]] = {"before": [], "now": []}
            for _ in range(2):
                for name, root, legacy in (("before", before, True), ("now", REPO, False)):
                    d = Daemon(cluster, root, work, jobs, legacy)
                    try:
                        rates[name].append(d.drive(args.n))
                    finally:
                        d.close()
            b, n = statistics.median(rates["before"]), statistics.median(rates["now"])
            print(f"cost  before (agents unauthenticated, unmunge forks): {b:8,.0f}/s  runs {rates['before']}")
            print(f"cost  now    (munge agents + clients, MACs, ACKs):    {n:8,.0f}/s  runs {rates['now']}")
            print(f"cost  ratio now / before: {n / b:.2f} (target >= 0.90)")
        print("floods (this tree's co-scheduler; the loop's ping round trip while each runs):")
        d = Daemon(cluster, REPO, work, jobs, legacy=False, env={"FAAS_QUOTA_MAX_QUEUED": str(args.big_n * 2)})
        try:
            from faas_runtime.queue_client import Client

            with Client(d.endpoint, str(cluster.munge_socket), timeout_s=600) as c:
                deadline = time.monotonic() + 30
                while len(c.agents()) < 4 and time.monotonic() < deadline:
                    time.sleep(0.1)
                c.register(name="never-fits", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=64, mem_mb=1,
                           timeout_s=60)
                measured(d.endpoint, "idle", lambda: time.sleep(2))
                measured(d.endpoint, "8,000 bogus munge credentials",
                         lambda: bogus_credentials(d.endpoint, str(cluster.munge_socket), 8000))
                measured(d.endpoint, "5 frames of 256 MiB", lambda: big_frames(d.endpoint, 256, 5))
                measured(d.endpoint, "10,000 four-frame messages", lambda: four_frames(d.endpoint, 10_000))
                measured(d.endpoint, "10,000 forged agent results", lambda: forged_agent(d.endpoint, 10_000))
                measured(d.endpoint, f"a batch of {args.big_n:,} (requests of 1,000, the maximum)",
                         lambda: c.invoke_batch("never-fits", ["null"] * args.big_n, chunk=1_000))
                measured(d.endpoint, f"cancel of those {args.big_n:,}", lambda: c.cancel_function("never-fits"))
        finally:
            d.close()
        if before is not None:
            d = Daemon(cluster, before, work, jobs, legacy=True)
            try:
                time.sleep(2)
                measured(d.endpoint, "before: 2,000 bogus munge credentials",
                         lambda: bogus_credentials(d.endpoint, str(cluster.munge_socket), 2000))
            finally:
                d.close()
    finally:
        cluster.down()
        trees.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
