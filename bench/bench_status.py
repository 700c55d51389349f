"""`faas-admin status` and the Prometheus /metrics scrape at 100,000 queued invocations, on
SQLite and PostgreSQL, against the same co-scheduler with an empty queue (the baseline,
measured in the same run).

    python bench/bench_status.py                    # both databases, 100,000 queued
    python bench/bench_status.py --db sqlite -n 20000

Per database: a co-scheduler of its own (`coscheduler.daemon --foreground`, metrics_bind
on), with munge and Slurm of a dev cluster. Timed on the empty queue, then again after N
invocations were queued with the database's bulk path (``add_invocations``, 10,000 per
transaction, spread over 20 users; no agent lends anything, so they stay queued):

  status cli   `faas-admin status -o json`, a new process each time (Python start, munge,
               the request), median of --repeat
  request      the STATUS request alone (Client.overview in this process), median
  /metrics     GET /metrics once the exporter's refresh has seen the whole queue, median
               (a scrape renders the overview the loop refreshes every 5 s: the loop pays
               about one `request` per 5 s for it)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import free_port, start_postgres  # noqa: E402
from coscheduler import db as D  # noqa: E402
from coscheduler.tools.devcluster import DevCluster  # noqa: E402
from faas_runtime.queue_client import Client  # noqa: E402

USERS = 20
BATCH = 10_000


def fill(url: str, n: int) -> float:
    """Queue ``n`` invocations over USERS users' functions; seconds it took."""
    db = D.Database(url)
    t0 = time.perf_counter()
    with db.session() as s:
        fns = [D.Function(name=f"status-bench-{u}", owner_uid=2000 + u, owner_gid=2000 + u, entrypoint="m:f",
                          code_dir="/", cores=1, mem_mb=64, timeout_s=60, max_attempts=1) for u in range(USERS)]
        s.add_all(fns)
        s.flush()
        fn_ids = [(fn.id, fn.owner_uid) for fn in fns]
    for u, (fn_id, uid) in enumerate(fn_ids):
        share = n // USERS + (1 if u < n % USERS else 0)
        for start in range(0, share, BATCH):
            with db.session() as s:
                D.add_invocations(s, s.get(D.Function, fn_id), ["null"] * min(BATCH, share - start), uid)
    db.dispose()
    return time.perf_counter() - t0


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scrape(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url, timeout=30) as r:
        return r.read().decode()


def queued_in_metrics(text: str) -> int:
    for line in text.splitlines():
        if line.startswith('slurm_faas_invocations{state="QUEUED"}'):
            return int(float(line.split()[-1]))
    return 0


def measure(env: dict, endpoint: str, munge: str, metrics_url: str, expect_queued: int, repeat: int) -> dict:
    deadline = time.monotonic() + 60
    while queued_in_metrics(scrape(metrics_url)) != expect_queued:   # the exporter refreshes every 5 s
        if time.monotonic() > deadline:
            raise RuntimeError(f"/metrics never showed {expect_queued} queued")
        time.sleep(0.5)
    cli = [str(Path(sys.executable).parent / "faas-admin"), "status", "-o", "json"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"faas-admin status failed: {out.stderr}")
    with Client(endpoint, munge, timeout_s=120) as c:
        request = median_s(c.overview, repeat)
    return {"cli": median_s(lambda: subprocess.run(cli, env=env, capture_output=True, check=True, timeout=120),
                            repeat),
            "request": request, "metrics": median_s(lambda: scrape(metrics_url), repeat)}


def run_one(cluster: DevCluster, url: str, n: int, repeat: int, work: Path, name: str) -> tuple[dict, dict, float]:
    endpoint, mport = f"tcp://127.0.0.1:{free_port()}", free_port()
    metrics_url = f"http://127.0.0.1:{mport}/metrics"
    env = {**cluster.client_env(), "FAAS_COSCHEDULER": endpoint}
    daemon = subprocess.Popen([sys.executable, "-m", "coscheduler.daemon", "--foreground", "--db", url, "--bind",
                               endpoint, "--munge-socket", str(cluster.munge_socket), "--slurm-backend", "cli",
                               "--log-file", str(work / f"coscheduler-{name}.log"), "--log-level", "WARNING"],
                              env={**env, "FAAS_METRICS_BIND": f"127.0.0.1:{mport}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(metrics_url)
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"the co-scheduler did not come up (see {work}/coscheduler-{name}.log)")
                time.sleep(0.3)
        empty = measure(env, endpoint, str(cluster.munge_socket), metrics_url, 0, repeat)
        fill_s = fill(url, n)
        full = measure(env, endpoint, str(cluster.munge_socket), metrics_url, n, repeat)
        return empty, full, fill_s
    finally:
        daemon.terminate()
        daemon.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="queued invocations")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=7, help="timings per figure (the median is printed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faas-bench-status-"))
    work.chmod(0o755)
    cluster = DevCluster(work / "cluster", accounting=False)
    stops = []
    try:
        urls = {}
        if args.db in ("sqlite", "both"):
            urls["sqlite"] = f"sqlite:///{work / 'queue.db'}"
        if args.db in ("postgresql", "both"):
            (work / "pg").mkdir()
            urls["postgresql"], stop = start_postgres(work / "pg")
            stops.append(stop)
        cluster.up(timeout_s=120)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"N = {args.n:,} queued over {USERS} users; medians of {args.repeat}")
        print(f"{'database':<11} {'queue':>8} {'status cli':>11} {'request':>9} {'/metrics':>9}")
        for name, url in urls.items():
            empty, full, fill_s = run_one(cluster, url, args.n, args.repeat, work, name)
            for label, r in (("empty", empty), (f"{args.n:,}", full)):
                print(f"{name:<11} {label:>8} {r['cli'] * 1e3:>8.0f} ms {r['request'] * 1e3:>6.1f} ms "
                      f"{r['metrics'] * 1e3:>6.1f} ms")
            print(f"{name:<11} ratio full/empty: status cli x{full['cli'] / empty['cli']:.2f}, request "
                  f"x{full['request'] / empty['request']:.2f}, /metrics x{full['metrics'] / empty['metrics']:.2f}; "
                  f"queued {args.n:,} in {fill_s:.1f} s")
    finally:
        cluster.down()
        for stop in stops:
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
