"""High availability on the real dev cluster: two co-schedulers on one PostgreSQL database
(coscheduler/tools/devcluster_ha.py), agents and clients given both addresses. The active
one is killed with SIGKILL in the middle of a batch of no-ops; the standby takes over, the
agents and the client follow it, every invocation ends SUCCEEDED and none runs twice.

``FAAS_FAILOVER_N`` sets the batch (default 10,000, the issue's figure)."""
import collections
import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from coscheduler.tools.devcluster import Component
from coscheduler.tools.devcluster_ha import PROGRAM
from faas_runtime.queue_client import Client
from tests.conftest import running_cluster

from .helpers import FUNCTIONS, sbatch, wait_until

N = int(os.environ.get("FAAS_FAILOVER_N", "10000"))


def separate_database(postgres_url: str, name: str) -> str:
    """A database of its own on the tests' PostgreSQL server (other tests drop the schema of theirs)."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    head, _, query = postgres_url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture(scope="module")
def ha_cluster(postgres_url):
    from coscheduler.tools.devcluster_ha import HADevCluster

    database = separate_database(postgres_url, "faas_ha")
    yield from running_cluster(lambda root: HADevCluster(root, database), "faas-ha-cluster-", timeout_s=120)


def lend_everywhere(cluster, client, cores: int) -> list[int]:
    """One batch job per node lending ``cores``; their ids once every lend is a slot."""
    jobs = [sbatch(cluster, "-N1", "-c8", f"--faas-share=cores={cores}", "--output=/dev/null", "--wrap", "sleep 900")
            for _ in range(3)]
    wait_until("every lend a slot",
               lambda: {s["job_id"] for s in client.slots() if s["state"] == "ACTIVE"} >= set(jobs), timeout_s=90)
    return jobs


def tally_counts(path: Path) -> collections.Counter:
    try:
        return collections.Counter(int(line) for line in path.read_text().split())
    except FileNotFoundError:
        return collections.Counter()


def tally_batch_under_way(cluster, client, name: str, tally: Path, n: int, jobs: list[int]) -> list[int]:
    """``name`` registered (each no-op appends its number to ``tally``), a lend on every node
    (its job ids added to ``jobs``, which the caller cancels), ``n`` of them submitted: their
    ids, once a fifth of them ran."""
    client.register(name=name, entrypoint="failover_fns:tally", code_dir=str(FUNCTIONS), cores=1,
                    mem_mb=64, timeout_s=60, max_attempts=3)
    jobs.extend(lend_everywhere(cluster, client, cores=4))
    ids = client.invoke_batch(name, [json.dumps({"file": str(tally), "n": i}) for i in range(n)])
    wait_until("a fifth of the batch ran", lambda: sum(tally_counts(tally).values()) >= n // 5,
               timeout_s=600, interval_s=0.1)
    return ids


def test_kill_9_of_the_active_coscheduler_mid_batch(ha_cluster):
    cluster = ha_cluster
    tally = cluster.root / "jobs" / "tally.txt"  # the jobs directory is everyone's (1777)
    jobs: list[int] = []
    try:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=60) as client:
            ids = tally_batch_under_way(cluster, client, "tally", tally, N, jobs)
            killed = cluster.kill_active()
            rows = client.wait_many(ids, timeout_s=1200)
            assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
            assert sorted(rows) == sorted(ids)  # nothing lost
            counts = tally_counts(tally)
            assert set(counts) == set(range(N))
            twice = sorted(n for n, c in counts.items() if c > 1)
            assert twice == [], f"ran more than once: {twice[:20]} ({len(twice)})"
            assert cluster.active() not in (None, killed)  # the standby took over
            ha = client.overview()["health"]["ha"]  # what `faas-admin status` shows
            active_pid = cluster.pid_of(Component(cluster.active(), PROGRAM))
            assert ha["epoch"] >= 2 and ha["active"].endswith(f":{active_pid}")
    finally:
        if jobs:
            subprocess.run(["scancel", *map(str, jobs)], env=cluster.client_env(), capture_output=True)
        cluster.start_missing()  # the killed one comes back as the standby


def test_a_stopped_active_coscheduler_is_replaced_and_fenced(ha_cluster):
    """SIGSTOP (a frozen host) instead of SIGKILL: the stopped one keeps its lock connection
    open, so the standby ends its sessions once it has been silent for STALLED_S and takes
    over; resumed (SIGCONT), the old one commits nothing and exits with EXIT_LOST."""
    import signal

    from coscheduler.leader import EXIT_LOST

    cluster, n = ha_cluster, min(N, 2000)
    tally = cluster.root / "jobs" / "tally-stop.txt"
    jobs: list[int] = []
    try:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=60) as client:
            ids = tally_batch_under_way(cluster, client, "tally-stop", tally, n, jobs)
            stopped = wait_until("an active co-scheduler", cluster.active, timeout_s=60)
            pid = cluster.pid_of(Component(stopped, PROGRAM))
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_until("the standby taking over", lambda: cluster.active() not in (None, stopped), timeout_s=120)
            finally:
                os.kill(pid, signal.SIGCONT)
            _, status = os.waitpid(pid, 0)  # the dev cluster started it from this process
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_LOST
            rows = client.wait_many(ids, timeout_s=1200)
            assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
            counts = tally_counts(tally)
            assert set(counts) == set(range(n))
            assert [i for i, c in counts.items() if c > 1] == []
    finally:
        if jobs:
            subprocess.run(["scancel", *map(str, jobs)], env=cluster.client_env(), capture_output=True)
        cluster.start_missing()


def test_an_active_one_fenced_by_a_newer_epoch_exits_for_its_supervisor(postgres_url, tmp_path):
    """A real co-scheduler (--ha) whose epoch another one raised (it took the lock while this
    one's lock connection was cut off) commits nothing more and exits with EXIT_LOST, so
    that systemd restarts it as a standby."""
    import sys

    from coscheduler.leader import EXIT_LOST
    from coscheduler.tools.devcluster_procs import free_port

    url = separate_database(postgres_url, "faas_fence")
    (tmp_path / "c.toml").write_text("")
    log = tmp_path / "coscheduler.log"
    proc = subprocess.Popen([sys.executable, "-m", "coscheduler.daemon", "--ha", "--config", str(tmp_path / "c.toml"),
                             "--db", url, "--bind", f"tcp://127.0.0.1:{free_port()}", "--log-file", str(log),
                             "--slurm-backend", "cli", "--foreground"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_until("the active one", lambda: log.exists() and "is the active one" in log.read_text(), timeout_s=60)
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("UPDATE coscheduler_leader SET epoch = epoch + 1, holder = 'elsewhere:1' WHERE id = 1"))
        engine.dispose()
        assert proc.wait(timeout=60) == EXIT_LOST
        assert "another co-scheduler became active" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
