"""The SPANK plugin on every node of a job (PrologFlags=Alloc,Contain): multi-node batch jobs,
salloc, arrays, het jobs, steps that need the lent cores back, an unprivileged user."""
import json
import os
import re
import subprocess


from .conftest import drained_nodes
from .helpers import job_state, lend_record, run, sbatch, wait_until

LONG = 90  # s; several clusters share this 2-CPU machine


def job_cpu_ids(cluster, job_id: int) -> dict[str, list[int]]:
    """{node: Slurm core ids} from `scontrol -d show job` (Nodes=n[1-2] CPU_IDs=0-3 Mem=...)."""
    from spank_plugin.core import parse_cpulist

    out = run(cluster, "scontrol", "-d", "show", "job", str(job_id)).stdout
    found = {}
    for nodes, ids in re.findall(r"Nodes=(\S+) CPU_IDs=(\S+)", out):
        names = run(cluster, "scontrol", "show", "hostnames", nodes).stdout.split()
        for name in names:
            found[name] = parse_cpulist(ids)
    return found


def record(cluster, job_id: int, node: str, state: str = "lent", timeout_s: float = 20) -> dict:
    path = lend_record(cluster, job_id, node)

    def read():
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return rec if rec["state"] == state else None

    return wait_until(f"{state} record of job {job_id} on {node}", read, timeout_s=timeout_s)


def running(cluster, job_id: int) -> None:
    wait_until(f"job {job_id} running", lambda: job_state(cluster, job_id) == "RUNNING", timeout_s=LONG)


def block_map(ids):
    return [i * os.cpu_count() // 8 for i in ids]  # cpu_map=block node_cpus=8 (docs/dev-cluster.md)


def test_every_node_of_a_three_node_job_lends_and_revokes(cluster, jobs):
    job = sbatch(cluster, "-N3", "-c4", "--mem-per-cpu=1000", "--faas-share=cores=2,mem=1G", "-o", "/dev/null",
                 "--wrap", "sleep 120")
    jobs.append(job)
    running(cluster, job)
    cores = job_cpu_ids(cluster, job)
    assert sorted(cores) == ["n1", "n2", "n3"]
    for node, ids in cores.items():
        rec = record(cluster, job, node)
        assert rec["node"] == node and rec["job_id"] == job and rec["uid"] == 0
        assert rec["slurm_cpus"] == ids[-2:]  # the job keeps its low cores on each node
        assert rec["os_cpus"] == block_map(ids[-2:])
        assert rec["mem_mb"] == 1024
    run(cluster, "scancel", str(job))
    for node in cores:
        assert record(cluster, job, node, "revoked")["revoked_at"] >= rec["written_at"]
    assert drained_nodes(cluster) == []


def test_auto_lends_what_the_tasks_leave_on_each_node(cluster, jobs):
    # The paper's case in small: 2 ranks per 8-core node (exclusive) lend 6 cores per node.
    job = sbatch(cluster, "-N2", "--ntasks-per-node=2", "--exclusive", "--faas-share", "-o", "/dev/null",
                 "--wrap", "sleep 120")
    jobs.append(job)
    running(cluster, job)
    for node, ids in job_cpu_ids(cluster, job).items():
        assert len(ids) == 8
        rec = record(cluster, job, node)
        assert rec["slurm_cpus"] == ids[2:]
        assert rec["mem_mb"] == 4000  # auto_mem_percent=50 of DefMemPerCPU * 8
        assert rec["spec"] == ""


def test_a_step_needing_the_lent_cores_revokes_first(cluster, jobs, tmp_path):
    out = tmp_path / "out"
    out.parent.chmod(0o777)
    # 2 tasks per node are expected, 6 cores lent; then a step wants all 8 cores of the first node.
    job = sbatch(cluster, "-N2", "--ntasks-per-node=2", "--exclusive", "--faas-share", "-o", str(out),
                 "--wrap", "sleep 2; srun -N1 -n1 -c8 true && echo step-ok; sleep 120")
    jobs.append(job)
    running(cluster, job)
    nodes = sorted(job_cpu_ids(cluster, job))
    first, other = nodes[0], nodes[1]
    assert record(cluster, job, first, "revoked", timeout_s=LONG)
    assert wait_until("step output", lambda: out.exists() and "step-ok" in out.read_text(), timeout_s=LONG)
    assert record(cluster, job, other)["state"] == "lent"  # only the node that needed it
    assert drained_nodes(cluster) == []


def test_bare_flag_does_not_break_srun_inside_the_job(cluster, jobs, tmp_path):
    out = tmp_path / "out"
    out.parent.chmod(0o777)
    job = sbatch(cluster, "-N1", "-n2", "--faas-share", "-o", str(out), "--wrap", "srun -n2 echo hi")
    jobs.append(job)
    wait_until("job done", lambda: job_state(cluster, job) in ("COMPLETED", "GONE", "FAILED"), timeout_s=LONG)
    assert job_state(cluster, job) in ("COMPLETED", "GONE")
    assert out.read_text().split() == ["hi", "hi"]


def test_salloc_allocation_lends_on_every_node(cluster):
    script = ("sleep 1; for n in $(scontrol show hostnames $SLURM_JOB_NODELIST); do "
              f"cat {cluster.spool}/$n/$SLURM_JOB_ID.json; echo; done; srun -N2 true && echo srun-ok")
    out = subprocess.run(["salloc", "-N2", "-c2", "--faas-share=cores=1", "bash", "-c", script],
                         capture_output=True, text=True, env=cluster.client_env(), timeout=LONG)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2 and len({r["node"] for r in records}) == 2
    assert all(r["state"] == "lent" and len(r["slurm_cpus"]) == 1 for r in records)
    assert "srun-ok" in out.stdout
    job = records[0]["job_id"]
    for r in records:
        assert record(cluster, job, r["node"], "revoked")
    assert drained_nodes(cluster) == []


def test_array_tasks_lend_under_their_own_job_ids(cluster, jobs):
    out = run(cluster, "sbatch", "--parsable", "-a", "1-2", "-c2", "--faas-share=cores=1", "-o", "/dev/null",
              "--wrap", "sleep 120")
    array_id = int(out.stdout.strip().split(";")[0])
    jobs.append(array_id)

    def task_ids():
        lines = run(cluster, "squeue", "-h", "-r", "-o", "%A %i %T %N").stdout.splitlines()
        rows = [ln.split() for ln in lines if ln.split()[1].startswith(f"{array_id}_")]
        return rows if len(rows) == 2 and all(r[2] == "RUNNING" for r in rows) else None

    rows = wait_until("array tasks running", task_ids, timeout_s=LONG)
    assert len({r[0] for r in rows}) == 2
    for job_id, _name, _state, node in rows:
        rec = record(cluster, int(job_id), node)
        assert rec["job_id"] == int(job_id) and len(rec["slurm_cpus"]) == 1
    assert drained_nodes(cluster) == []


def test_het_job_components_lend_as_their_own_jobs(cluster, jobs):
    job = sbatch(cluster, "-c2", "--faas-share=cores=1", "-o", "/dev/null", "--wrap", "sleep 120", ":", "-c4")
    jobs.append(job)

    def components():
        lines = run(cluster, "squeue", "-h", "-o", "%A %i %T %N").stdout.splitlines()
        rows = [ln.split() for ln in lines if ln.split()[1].startswith(f"{job}+")]
        return rows if len(rows) == 2 and all(r[2] == "RUNNING" for r in rows) else None

    rows = wait_until("het job running", components, timeout_s=150)  # het jobs wait for the main scheduler
    for job_id, _name, _state, node in rows:
        rec = record(cluster, int(job_id), node)
        assert len(rec["slurm_cpus"]) == 1
    run(cluster, "scancel", str(job))
    for job_id, _name, _state, node in rows:
        assert record(cluster, int(job_id), node, "revoked")
    assert drained_nodes(cluster) == []


def test_unprivileged_user_job(cluster, jobs):
    import pwd

    nobody = pwd.getpwnam("nobody")
    out = subprocess.run(["runuser", "-u", "nobody", "--", "sbatch", "--parsable", "--chdir=/tmp", "-N2", "-c2",
                          "--faas-share=cores=1,mem=512M", "-o", "/dev/null", "--wrap", "sleep 120"],
                         capture_output=True, text=True, env=cluster.client_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    job = int(out.stdout.strip().split(";")[0])
    jobs.append(job)
    running(cluster, job)
    for node in job_cpu_ids(cluster, job):
        rec = record(cluster, job, node)
        assert rec["uid"] == nobody.pw_uid and rec["gid"] == nobody.pw_gid
        assert rec["mem_mb"] == 512 and len(rec["slurm_cpus"]) == 1
    # and the user's bad spec is refused in their own sbatch
    bad = subprocess.run(["runuser", "-u", "nobody", "--", "sbatch", "--chdir=/tmp", "--faas-share=cores=-1",
                          "--wrap", "true"], capture_output=True, text=True, env=cluster.client_env(), timeout=60)
    assert bad.returncode != 0 and "Invalid --faas-share argument" in bad.stderr
    assert drained_nodes(cluster) == []
