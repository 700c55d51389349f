"""The SPANK plugin inside a real Slurm: option, submit-time validation, lend records."""
import json

import pytest

from .conftest import drained_nodes
from .helpers import job_state, lend_record, run, sbatch, squeue_ids, wait_until


@pytest.mark.parametrize("command", ["sbatch", "srun", "salloc"])
def test_option_is_listed_in_help(cluster, command):
    out = run(cluster, command, "--help")
    assert "--faas-share" in out.stdout


@pytest.mark.parametrize("spec,complaint", [
    ("bogus", "is not key=value"),
    ("cores=0", "cores"),
    ("cores=2,cores=3", "duplicate"),
    ("mem=12Q", "mem"),
    ("cpus=4", "unknown key"),
    ("until=5", "until"),
])
def test_bad_spec_refused_at_submit_time(cluster, spec, complaint):
    before = squeue_ids(cluster)
    out = run(cluster, "sbatch", f"--faas-share={spec}", "--wrap", "true", check=False)
    assert out.returncode != 0
    assert f"Invalid --faas-share argument: {spec}" in out.stderr
    assert complaint in out.stderr
    assert set(squeue_ids(cluster)) <= set(before)  # nothing new was queued
    assert drained_nodes(cluster) == []


def test_batch_job_writes_and_revokes_lend_record(cluster, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--mem=8G", "--faas-share=cores=2,mem=4G", "--wrap", "sleep 60")
    jobs.append(job)
    wait_until("job running", lambda: job_state(cluster, job) == "RUNNING")
    node = run(cluster, "squeue", "-h", "-j", str(job), "-o", "%N").stdout.strip()
    path = lend_record(cluster, job, node)
    record = wait_until("lend record", lambda: path.exists() and json.loads(path.read_text()))
    assert record["version"] == 1 and record["state"] == "lent"
    assert record["job_id"] == job and record["node"] == node and record["uid"] == 0
    assert record["slurm_cpus"] == [6, 7]  # the job keeps its low cores
    assert record["os_cpus"] == [1, 1]  # block map: 8 declared CPUs on 2 real ones (docs/dev-cluster.md)
    assert record["mem_mb"] == 4096
    run(cluster, "scancel", str(job))
    wait_until("revoked record", lambda: json.loads(path.read_text())["state"] == "revoked", timeout_s=5)
    assert drained_nodes(cluster) == []


def test_job_without_the_flag_lends_nothing(cluster, jobs):
    job = sbatch(cluster, "-N1", "-c2", "--wrap", "sleep 30")
    jobs.append(job)
    wait_until("job running", lambda: job_state(cluster, job) == "RUNNING")
    node = run(cluster, "squeue", "-h", "-j", str(job), "-o", "%N").stdout.strip()
    assert not lend_record(cluster, job, node).exists()


def test_lending_problem_never_fails_the_job_or_drains(cluster, jobs, tmp_path):
    """The spool is missing: the job still runs to completion and no node drains."""
    spool = cluster.spool
    moved = spool.with_name("spool.away")
    spool.rename(moved)
    try:
        out_file = tmp_path / "out.txt"
        job = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=2", "-o", str(out_file), "--wrap", "echo fine")
        jobs.append(job)
        wait_until("job finished", lambda: job_state(cluster, job) not in ("PENDING", "RUNNING", "COMPLETING"))
        assert job_state(cluster, job) in ("COMPLETED", "GONE")
        assert wait_until("job output", lambda: out_file.exists() and out_file.read_text()).strip() == "fine"
        assert drained_nodes(cluster) == []
    finally:
        moved.rename(spool)
