"""The command lines as a user types them, against the real dev cluster."""
import json

import pytest

from tests.integration.helpers import FUNCTIONS, job_state, run, sbatch, wait_until


@pytest.fixture
def lending_job(cluster):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2,mem=2G", "--wrap", "sleep 120")
    wait_until("job running", lambda: job_state(cluster, job) == "RUNNING")
    yield job
    run(cluster, "scancel", str(job), check=False)


def test_register_invoke_wait_status_result(cluster, lending_job):
    out = run(cluster, "submit-function", "register", "e2e-where", "--entrypoint", "probe:where",
              "--code", str(FUNCTIONS), "--mem", "128M", "--timeout", "20")
    assert out.stdout.startswith("registered e2e-where")
    wait_until("slot listed", lambda: str(lending_job) in run(cluster, "faas-admin", "slots").stdout)
    out = run(cluster, "submit-function", "invoke", "e2e-where", "--payload", '{"hello": "world"}', "--wait")
    value = json.loads(out.stdout)
    assert value["echo"] == {"hello": "world"} and value["job"] == str(lending_job)
    inv_id = int(run(cluster, "submit-function", "invoke", "e2e-where", "--payload", "[1,2]").stdout)
    assert run(cluster, "submit-function", "wait", str(inv_id)).stdout.strip() == "SUCCEEDED"
    status = run(cluster, "submit-function", "status", str(inv_id), "--history").stdout
    assert status.splitlines()[0] == "SUCCEEDED" and "DISPATCHED" in status and f"job {lending_job}" in status
    assert json.loads(run(cluster, "submit-function", "result", str(inv_id)).stdout)["echo"] == [1, 2]
    doc = json.loads(run(cluster, "submit-function", "status", str(inv_id), "-o", "json").stdout)
    assert doc["state"] == "SUCCEEDED" and doc["job_id"] == lending_job
    slots = json.loads(run(cluster, "faas-admin", "slots", "-o", "json").stdout)
    assert any(s["job_id"] == lending_job and s["mem_mb"] == 2048 for s in slots)


@pytest.mark.parametrize("argv,message", [
    (["invoke", "no-such-function"], "no function named 'no-such-function'"),
    (["invoke", "e2e-where", "--payload", "{bad json"], "not JSON"),
    (["result", "987654"], "no invocation 987654"),
    (["register", "x", "--entrypoint", "nocolon", "--code", "/tmp"], "module:function"),
    (["register", "x", "--entrypoint", "m:f", "--code", "/tmp", "--mem", "12Q"], "mem"),
])
def test_bad_input_is_one_clear_error(cluster, argv, message):
    out = run(cluster, "submit-function", *argv, check=False)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_result_before_it_exists_is_a_clear_error(cluster):
    run(cluster, "submit-function", "register", "e2e-sleepy", "--entrypoint", "probe:sleepy",
        "--code", str(FUNCTIONS), "--timeout", "20")
    inv_id = run(cluster, "submit-function", "invoke", "e2e-sleepy", "--payload", "5").stdout.strip()
    out = run(cluster, "submit-function", "result", inv_id, check=False)
    # queued, or at most a few seconds into its 5 s sleep: either way there is no result yet
    assert out.returncode == 1 and "no result yet" in out.stderr


def test_dev_cluster_env_and_status(cluster):
    env = run(cluster, "faas-admin", "dev-cluster", "--dir", str(cluster.root), "env").stdout
    assert f"export SLURM_CONF={cluster.slurm_conf}" in env
    assert "export FAAS_COSCHEDULER=tcp://127.0.0.1:" in env
    status = run(cluster, "faas-admin", "dev-cluster", "--dir", str(cluster.root), "status").stdout
    for comp in ("munged", "slurmctld", "slurmd-n1", "faas-coscheduler", "faas-agent-n3"):
        assert f"{comp}" in status
    assert "stopped" not in status
    # up: idle, running jobs, or finishing one (with proctrack/cgroup a node says comp a moment)
    assert sum(status.count(s) for s in ("idle", "mix", "alloc", "comp")) >= 3, status


def test_up_is_idempotent(cluster):
    before = cluster.status()
    out = run(cluster, "faas-admin", "dev-cluster", "--dir", str(cluster.root), "up")
    assert "dev cluster up" in out.stdout
    assert cluster.status() == before  # nothing restarted, nothing duplicated
