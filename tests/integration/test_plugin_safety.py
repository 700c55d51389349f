"""No lending problem fails a job or drains a node: each case against the real cluster.

Each test breaks something the plugin needs, runs a job that asks to lend, and checks that
the job completes, the node log has one clear line, nothing is lent, and `sinfo` shows no
drained node afterwards.
"""
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import drained_nodes
from .helpers import job_state, run, sbatch, wait_until

LONG = 90


def finish(cluster, *sbatch_args: str, env=None) -> int:
    """Submit a short job that asks to lend; wait until it is over; return its id."""
    job = sbatch(cluster, *sbatch_args, "-o", "/dev/null", "--wrap", "sleep 1; echo done") if env is None else \
        int(subprocess.run(["sbatch", "--parsable", *sbatch_args, "-o", "/dev/null", "--wrap", "sleep 1"],
                           capture_output=True, text=True, env=env, check=True).stdout.split(";")[0])
    wait_until(f"job {job} over", lambda: job_state(cluster, job) not in ("PENDING", "RUNNING", "COMPLETING",
                                                                            "CONFIGURING"), timeout_s=LONG)
    return job


def assert_fine(cluster, job: int) -> None:
    assert job_state(cluster, job) in ("COMPLETED", "GONE")
    assert drained_nodes(cluster) == []


def node_log(cluster, node: str) -> str:
    return (cluster.root / "log" / f"slurmd-{node}.log").read_text(errors="replace")


def wait_log(cluster, node: str, needle: str) -> None:
    wait_until(f"'{needle}' in slurmd-{node}.log", lambda: needle in node_log(cluster, node), timeout_s=30)


@contextmanager
def spool_replaced_by(cluster, make):
    """Move the spool aside, let make(path) put something in its place, restore afterwards."""
    spool = cluster.spool
    aside = spool.with_name("spool.safety-aside")
    spool.rename(aside)
    try:
        make(spool)
        yield spool
    finally:
        if spool.is_mount():
            subprocess.run(["umount", "-l", str(spool)], check=False)
        if spool.is_dir() and not spool.is_symlink():
            shutil.rmtree(spool, ignore_errors=True)
        elif spool.exists() or spool.is_symlink():
            spool.unlink()
        aside.rename(spool)


def test_spool_is_a_file(cluster):
    with spool_replaced_by(cluster, lambda p: p.write_text("not a directory")):
        job = finish(cluster, "-w", "n1", "-c2", "--faas-share=cores=1")
    wait_log(cluster, "n1", f"faas: job {job} on n1: cannot open spool directory")
    assert_fine(cluster, job)


def test_node_dir_is_a_file(cluster):
    def make(p: Path):
        p.mkdir()
        (p / "n2").write_text("in the way")
    with spool_replaced_by(cluster, make):
        job = finish(cluster, "-w", "n2", "-c2", "--faas-share=cores=1")
    wait_log(cluster, "n2", f"faas: job {job} on n2")
    assert f"cannot open {cluster.spool}/n2" in node_log(cluster, "n2") or "Not a directory" in node_log(cluster, "n2")
    assert_fine(cluster, job)


def test_node_dir_symlink_is_refused(cluster, tmp_path):
    """Bad permissions in the spool (a node directory that points elsewhere) are refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def make(p: Path):
        p.mkdir()
        (p / "n3").symlink_to(elsewhere)
    with spool_replaced_by(cluster, make):
        job = finish(cluster, "-w", "n3", "-c2", "--faas-share=cores=1")
        assert list(elsewhere.iterdir()) == []
    wait_log(cluster, "n3", f"faas: job {job} on n3")
    assert_fine(cluster, job)


@pytest.mark.parametrize("opts", ["ro,size=64k", "size=8k"])
def test_read_only_or_full_spool(cluster, opts):
    def make(p: Path):
        p.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "faas-safety", str(p)], check=True)
        if "ro" not in opts.split(","):
            fd = os.open(p / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill it to the last block
                while os.write(fd, b"x" * 1024) > 0:
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
    with spool_replaced_by(cluster, make) as spool:
        job = finish(cluster, "-w", "n1", "-c2", "--faas-share=cores=1")
        assert not (spool / "n1" / f"{job}.json").exists()
    wait_log(cluster, "n1", f"faas: job {job} on n1")
    assert_fine(cluster, job)


def _held_job(cluster, *args: str) -> int:
    return sbatch(cluster, "-H", *args, "-o", "/dev/null", "--wrap", "sleep 1")


def _release_and_finish(cluster, job: int) -> None:
    run(cluster, "scontrol", "release", str(job))
    wait_until(f"job {job} over", lambda: job_state(cluster, job) not in ("PENDING", "RUNNING", "COMPLETING",
                                                                            "CONFIGURING"), timeout_s=LONG)


def test_unreadable_cgroup_lends_nothing(cluster):
    job = _held_job(cluster, "-w", "n2", "-c2", "--faas-share=cores=1")
    cpuset = cluster.root / "cgroup" / "cpuset" / "slurm_n2" / "uid_0" / f"job_{job}" / "cpuset.cpus"
    cpuset.mkdir(parents=True)  # a directory where the file should be: read fails (EISDIR)
    try:
        _release_and_finish(cluster, job)
    finally:
        shutil.rmtree(cluster.root / "cgroup" / "cpuset", ignore_errors=True)
    wait_log(cluster, "n2", f"faas: job {job}: cannot read the job's cpuset")
    assert not (cluster.spool / "n2" / f"{job}.json").exists()
    assert_fine(cluster, job)


def test_confined_job_lends_the_os_cpus_of_its_cpuset(cluster, jobs):
    job = _held_job(cluster, "-w", "n3", "-c2", "--faas-share=cores=1")
    base = cluster.root / "cgroup" / "cpuset" / "slurm_n3" / "uid_0" / f"job_{job}"
    base.mkdir(parents=True)
    (base / "cpuset.cpus").write_text(f"{os.cpu_count() - 2}-{os.cpu_count() - 1}\n")
    try:
        run(cluster, "scontrol", "release", str(job))
        path = cluster.spool / "n3" / f"{job}.json"
        rec = wait_until("record", lambda: path.exists() and json.loads(path.read_text()), timeout_s=LONG)
    finally:
        shutil.rmtree(cluster.root / "cgroup" / "cpuset", ignore_errors=True)
    assert len(rec["slurm_cpus"]) == 1
    assert rec["os_cpus"] == [os.cpu_count() - 1]  # the job's second OS CPU, not the block map's guess
    assert drained_nodes(cluster) == []


def _finish_with_env(cluster, env_extra: dict, *share: str) -> tuple[int, str]:
    """Run a short job from a shell that exports ``env_extra``; its id and what its batch
    script saw of those variables."""
    out = cluster.root / "jobs" / "safety-%j.out"
    names = " ".join(env_extra)
    env = {**cluster.client_env(), **env_extra}
    job = int(subprocess.run(["sbatch", "--parsable", "-w", "n1", "-c2", *share, "--export=ALL", "-o", str(out),
                              "--wrap", f"for v in {names}; do printenv $v || echo; done; sleep 1"],
                             capture_output=True, text=True, env=env, check=True).stdout.split(";")[0])
    wait_until(f"job {job} over", lambda: job_state(cluster, job) not in ("PENDING", "RUNNING", "COMPLETING",
                                                                            "CONFIGURING"), timeout_s=LONG)
    text = Path(str(out).replace("%j", str(job))).read_text()
    # the script's lines; slurmstepd adds its own errors to the same file
    return job, "\n".join(line for line in text.splitlines() if not line.startswith("slurmstepd"))


def test_a_hostile_node_name_reaches_the_plugin_and_is_refused(cluster):
    """SLURMD_NODENAME from the user's shell reaches the batch step's plugin (Slurm sets the
    script's own value later): the plugin refuses the name and writes nothing where the
    record would have gone, ``<spool>/../../etc/<job>.json``."""
    job, seen = _finish_with_env(cluster, {"SLURMD_NODENAME": "../../etc"}, "--faas-share=cores=1")
    assert seen.split() == ["n1"]  # the script sees Slurm's; the plugin saw the user's:
    wait_log(cluster, "n1", f"[{job}.batch] error: faas: job {job}")
    assert "bad node name '../../etc'" in node_log(cluster, "n1")
    escaped = (cluster.spool / "../../etc").resolve()  # <spool>/<node>, as the plugin would join it
    assert escaped == cluster.root.parent / "etc"
    assert not (escaped / f"{job}.json").exists()
    # the extern step lent under the real name, and the batch step's end revoked it there
    assert json.loads((cluster.spool / "n1" / f"{job}.json").read_text())["node"] == "n1"
    assert_fine(cluster, job)


def test_a_hostile_share_option_in_the_environment_reaches_the_plugin_and_lends_nothing(cluster):
    """No --faas-share on the command line: the option's variable from the user's shell is
    what slurmstepd's plugin parses; garbage lends nothing and fails nothing."""
    job, _ = _finish_with_env(cluster, {"_SLURM_SPANK_OPTION_faas_faas_share": "cores=garbage"})
    wait_log(cluster, "n1", f"faas: job {job}: --faas-share value did not parse in slurmstepd; lending nothing")
    assert "cores must be a positive integer, got 'garbage'" in node_log(cluster, "n1")
    assert_fine(cluster, job)


def test_garbage_task_counts_never_reach_the_plugin(cluster):
    """SLURM_TASKS_PER_NODE / SLURM_CPUS_PER_TASK are set by Slurm for the step, over the
    user's: the script sees Slurm's values. Should a Slurm pass the user's through, this
    fails, and the plugin's handling of them (``env_leading_uint``) needs a test here."""
    job, seen = _finish_with_env(cluster, {"SLURM_TASKS_PER_NODE": "garbage", "SLURM_CPUS_PER_TASK": "-3"},
                                 "--faas-share=cores=1")
    assert seen.split() == ["1", "2"]
    assert json.loads((cluster.spool / "n1" / f"{job}.json").read_text())["state"] == "revoked"
    assert_fine(cluster, job)


@contextmanager
def plugstack_args(cluster, *extra: str):
    conf = cluster.root / "etc" / "plugstack.conf.d" / "faas.conf"
    original = conf.read_text()
    conf.write_text(original.rstrip("\n") + " " + " ".join(extra) + "\n")
    try:
        yield
    finally:
        conf.write_text(original)


def _restart_slurmd(cluster, node: str) -> None:
    comp = next(c for c in cluster.components() if c.name == f"slurmd-{node}")
    pid = cluster.pid_of(comp)
    if pid:
        os.kill(pid, 15)
        wait_until("slurmd gone", lambda: cluster.pid_of(comp) is None, timeout_s=30)
    cluster.up(timeout_s=LONG)  # starts what is missing: this slurmd
    wait_until(f"{node} idle", lambda: cluster.node_states().get(node) in ("idle", "mix", "alloc"), timeout_s=LONG)


def test_bad_plugstack_argument_is_loud_at_slurmd_start_and_harmless(cluster):
    node = "n3"
    with plugstack_args(cluster, "reserve_cores=lots", "colour=blue"):
        _restart_slurmd(cluster, node)
        wait_log(cluster, node, "faas: plugstack.conf argument 'reserve_cores=lots'")
        assert "slurm-faas is INERT on this node" in node_log(cluster, node)
        job = finish(cluster, "-w", node, "-c2", "--faas-share=cores=1")
        assert not (cluster.spool / node / f"{job}.json").exists()
        assert_fine(cluster, job)
    _restart_slurmd(cluster, node)
    job = finish(cluster, "-w", node, "-c2", "--faas-share=cores=1")
    assert json.loads((cluster.spool / node / f"{job}.json").read_text())["state"] == "revoked"
    assert_fine(cluster, job)


def test_policy_lends_only_for_allowed_partitions_and_users(cluster):
    with plugstack_args(cluster, "allow_users=nobody"):
        job = finish(cluster, "-w", "n2", "-c2", "--faas-share=cores=1")
        wait_log(cluster, "n2", f"faas: job {job} lends nothing: user 'root' may not lend")
        assert not (cluster.spool / "n2" / f"{job}.json").exists()
    with plugstack_args(cluster, "allow_partitions=debug", "max_mem_percent=10"):
        job = finish(cluster, "-w", "n2", "-c2", "--mem=2000", "--faas-share=cores=1,mem=1G")
        assert json.loads((cluster.spool / "n2" / f"{job}.json").read_text())["mem_mb"] == 200
    assert drained_nodes(cluster) == []
