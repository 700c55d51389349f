"""Failover time: SIGKILL of the active co-scheduler -> the standby serving.

    .venv/bin/python bench/bench_failover.py [--kills 5] [--restarts 3] [--batch 3000]

Needs root (the dev cluster), PostgreSQL's server binaries and Slurm (make deps). Starts a
private PostgreSQL server and the dev cluster with two co-schedulers on it
(coscheduler/tools/devcluster_ha.py), three batch jobs lending 4 cores each, and a stream
of no-op invocations (tests/functions/failover_fns.py). Each round queues ``--batch``
no-ops, kills the active co-scheduler with SIGKILL once a fifth of them ran, and measures
from the kill to

- ``dispatch``: the first invocation dispatched by the new active one (the first
  DISPATCHED event in the database after the kill),
- ``answer``: the first client request answered by it (a client given both addresses,
  asking for an invocation's status from the moment of the kill),

then waits for the whole batch (every invocation must end SUCCEEDED) and starts the
killed one again as the standby. The baseline, measured in the same run: the same kill
with no standby, the co-scheduler restarted in place at once (what ``Restart=always``
with no delay would do), ``--restarts`` times. Printed: each round, p50 and max of each
figure, the ratio failover / restart, and the target (5 s).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from coscheduler.tools.devcluster import Component  # noqa: E402
from coscheduler.tools.devcluster_ha import COSCHEDULERS, PROGRAM, HADevCluster  # noqa: E402
from coscheduler.tools.private_postgres import PostgresMissing, private_postgres  # noqa: E402
from faas_runtime.queue_client import Client, Unavailable  # noqa: E402

FUNCTIONS = ROOT / "tests" / "functions"
TARGET_S = 5.0


@contextmanager
def postgres_of_this_run() -> Iterator[str]:
    """A PostgreSQL server of this run in a temporary directory (as tests/conftest.py's postgres_url)."""
    root = Path(tempfile.mkdtemp(prefix="faas-bench-pg-"))
    try:
        with private_postgres(root) as url:
            yield url
    except PostgresMissing as exc:
        sys.exit(str(exc))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def wait(what: str, check, timeout_s: float = 300.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(interval_s)
    return value


def lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def first_dispatch_after(engine, t0: float) -> float:
    """Seconds from ``t0`` (unix) to the first DISPATCHED event after it."""
    since = dt.datetime.fromtimestamp(t0, dt.timezone.utc)

    def first():
        with engine.connect() as conn:
            return conn.execute(text("SELECT min(at) FROM invocation_events WHERE to_state = 'DISPATCHED' "
                                     "AND at > :t"), {"t": since}).scalar()
    at = wait("a dispatch after the kill", first, timeout_s=120, interval_s=0.05)
    return at.timestamp() - t0


def one_round(cluster: HADevCluster, client: Client, engine, n: int, batch: int, restart_in_place: bool) -> dict:
    tally = cluster.root / "jobs" / f"tally-{n}.txt"
    ids = client.invoke_batch("tally", [json.dumps({"file": str(tally), "n": i}) for i in range(batch)])
    wait("a fifth of the batch", lambda: lines(tally) >= batch // 5)
    name = wait("an active co-scheduler", cluster.active)
    if restart_in_place:  # the baseline: nobody stands by; the dead one is started again at once
        other = next(c for c in COSCHEDULERS if c != name)
        pid = cluster.pid_of(Component(other, PROGRAM))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait(f"{other} gone", lambda: cluster.pid_of(Component(other, PROGRAM)) is None)
    pid = cluster.pid_of(Component(name, PROGRAM))
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    if restart_in_place:
        wait(f"{name} gone", lambda: cluster.pid_of(Component(name, PROGRAM)) is None, interval_s=0.005)
        cluster.start_missing()
    while True:
        try:
            client.status(ids[0])
            answer = time.time() - t0
            break
        except Unavailable:
            continue
    dispatch = first_dispatch_after(engine, t0)
    rows = client.wait_many(ids, timeout_s=900)
    states = {r["state"] for r in rows.values()}
    if states != {"SUCCEEDED"} or len(rows) != batch:
        sys.exit(f"round {n}: not every invocation succeeded: {states}, {len(rows)} of {batch}")
    cluster.start_missing()  # the killed one comes back as the standby
    time.sleep(2.0)  # ... and is standing by before the next kill
    return {"killed": name, "dispatch_s": dispatch, "answer_s": answer}


def summary(label: str, rounds: list[dict]) -> dict:
    out = {}
    for key in ("dispatch_s", "answer_s"):
        values = [r[key] for r in rounds]
        out[key] = statistics.median(values)
        print(f"  {label:8s} {key:11s} p50 {out[key]:6.2f} s   max {max(values):6.2f} s   "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="failovers measured")
    ap.add_argument("--restarts", type=int, default=3, help="restarts in place measured (the baseline)")
    ap.add_argument("--batch", type=int, default=3000, help="no-ops queued per round")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the dev cluster runs Slurm daemons: run as root")
    with postgres_of_this_run() as url:
        root = Path(tempfile.mkdtemp(prefix="faas-bench-ha-"))
        cluster = HADevCluster(root, url)
        engine = create_engine(url)
        try:
            cluster.up(timeout_s=120)
            with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=60) as client:
                client.register(name="tally", entrypoint="failover_fns:tally", code_dir=str(FUNCTIONS), cores=1,
                                mem_mb=64, timeout_s=60, max_attempts=3)
                jobs = [subprocess.run(["sbatch", "--parsable", "-N1", "-c8", "--faas-share=cores=4",
                                        "--output=/dev/null", "--wrap", "sleep 3600"], env=cluster.client_env(),
                                       capture_output=True, text=True, check=True).stdout.split(";")[0].strip()
                        for _ in range(3)]
                wait("three slots", lambda: {str(s["job_id"]) for s in client.slots() if s["state"] == "ACTIVE"}
                     >= set(jobs), timeout_s=120)
                failovers, restarts = [], []
                for n in range(args.kills):
                    failovers.append(one_round(cluster, client, engine, n, args.batch, restart_in_place=False))
                    print(f"failover {n}: {failovers[-1]}", flush=True)
                for n in range(args.restarts):
                    restarts.append(one_round(cluster, client, engine, 100 + n, args.batch, restart_in_place=True))
                    print(f"restart  {n}: {restarts[-1]}", flush=True)
        finally:
            engine.dispose()
            cluster.down()
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nkill -9 of the active co-scheduler, {args.batch} no-ops per round, 3 nodes x 4 lent cores "
          f"(machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    f = summary("failover", failovers)
    r = summary("restart", restarts) if restarts else None
    if r:
        for key in ("dispatch_s", "answer_s"):
            print(f"  failover / restart in place, {key}: {f[key] / r[key]:.2f}")
    verdict = "within" if f["dispatch_s"] <= TARGET_S and f["answer_s"] <= TARGET_S else "ABOVE"
    print(f"  target {TARGET_S:g} s (p50, kill -> first dispatch and first answer): {verdict}")


if __name__ == "__main__":
    main()
