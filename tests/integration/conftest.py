import subprocess

import pytest

from faas_runtime.queue_client import Client

from .helpers import FUNCTIONS, job_state, run, sbatch, wait_until


@pytest.fixture
def client(cluster):
    with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=20) as c:
        yield c


@pytest.fixture
def jobs(cluster):
    """Job ids a test submits; cancelled afterwards so tests do not share capacity."""
    submitted: list[int] = []
    yield submitted
    if submitted:
        subprocess.run(["scancel", *map(str, submitted)], env=cluster.client_env(), capture_output=True)


@pytest.fixture
def probe(client):
    """Register the probe functions for the test user; return their names."""
    for name in ("where", "square", "sleepy", "boom"):
        client.register(name=name, entrypoint=f"probe:{name}", code_dir=str(FUNCTIONS), cores=1, mem_mb=128,
                        timeout_s=30, max_attempts=3)
    return client


def drained_nodes(cluster) -> list[str]:
    return [n for n, st in cluster.node_states().items() if "drain" in st or st in ("drng", "drained", "down")]


@pytest.fixture(scope="module")
def lending_job(cluster):
    """A batch job lending 2 cores and 2 GiB on one node, for a module's tests."""
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2,mem=2G", "--wrap", "sleep 300")
    wait_until("job running", lambda: job_state(cluster, job) == "RUNNING", timeout_s=60)
    wait_until("slot listed", lambda: str(job) in run(cluster, "faas-admin", "slots").stdout, timeout_s=60)
    yield job
    run(cluster, "scancel", str(job), check=False)
