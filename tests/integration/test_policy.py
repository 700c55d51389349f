"""The placement policies on the real dev cluster, as users observe them: which
invocation ran on which batch job, which stayed queued. Walltime-aware lending (jobs with
``--time``, ``--faas-share=...,until=MIN``), a job whose time limit comes with work in
flight, and two real users (faas-alice, faas-bob) competing for the same lent cores under
priorities, fair-share weights and per-user quotas (the co-scheduler restarted with a
TOML configuration for the test). The same rules through the daemon alone:
tests/unit/test_policy_daemon.py; dispatch grace is tested there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adversarial.conftest import run_as
from tests.integration.runtime_fixtures import users  # noqa: F401  (fixture)

from .helpers import FUNCTIONS, active_slot, run, sbatch, wait_until

LONG = 180  # seconds: a generous limit for anything that waits on Slurm's time limits


def _no_other_lends(client) -> None:
    """Earlier tests' jobs are cancelled; wait until their lends are revoked too."""
    wait_until("no lend left from earlier tests", lambda: not any(s["state"] == "ACTIVE" for s in client.slots()),
               timeout_s=60, interval_s=0.5)


def _register(client, name: str, timeout_s: float, entrypoint: str = "probe:where") -> None:
    client.register(name=name, entrypoint=entrypoint, code_dir=str(FUNCTIONS), cores=1, mem_mb=128,
                    timeout_s=timeout_s, max_attempts=3)


@pytest.mark.parametrize("until,runs_there", [("", True), (",until=2", False)])
def test_a_function_runs_on_a_timed_job_only_if_it_can_finish_before_the_lend_ends(cluster, probe, jobs,
                                                                                   until, runs_there):
    """--time=5: the job ends in 300 s; with until=2 the lend ends 120 s earlier. A function
    with a 200 s timeout fits the first and not the second; one with 60 s fits both. Both
    are queued before the job starts (the lend's end must be known before anything runs)."""
    _no_other_lends(probe)
    _register(probe, "fits", 60)
    _register(probe, "needs-200s", 200)
    tight = probe.invoke("needs-200s", json.dumps("tight"))
    short = probe.invoke("fits", json.dumps("short"))
    job = sbatch(cluster, "-N1", "-c4", "--time=5", f"--faas-share=cores=2{until}", "--wrap", "sleep 600")
    jobs.append(job)
    done = probe.wait(short, timeout_s=60)
    assert done["state"] == "SUCCEEDED" and done["job_id"] == job
    if runs_there:
        final = probe.wait(tight, timeout_s=60)
        assert final["state"] == "SUCCEEDED" and final["job_id"] == job
        return
    # The scheduler placed the later invocation and passed this one over: never dispatched.
    st = probe.status(tight)
    assert st["state"] == "QUEUED" and [h[0] for h in st["history"]] == ["QUEUED"]
    # A job without a time limit lends for as long as it likes: it runs there.
    other = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=1", "--wrap", "sleep 600")
    jobs.append(other)
    final = probe.wait(tight, timeout_s=60)
    assert final["state"] == "SUCCEEDED" and final["job_id"] == other and final["attempts"] == 1


def test_a_job_cut_short_by_its_time_limit_revokes_and_loses_nothing(cluster, probe, jobs):
    """Work in flight when the job's time limit comes (the operator shortened it with
    scontrol): the lend is revoked, the running invocation is evicted and requeued, the ones
    waiting stay queued, and all of them finish on the next job that lends."""
    _no_other_lends(probe)
    _register(probe, "slow", 300, entrypoint="probe:sleepy")
    job = sbatch(cluster, "-N1", "-c4", "--time=30", "--faas-share=cores=1", "--wrap", "sleep 1200")
    jobs.append(job)
    active_slot(probe, job)
    in_flight = probe.invoke("slow", json.dumps(120))
    behind = [probe.invoke("slow", json.dumps(0.1)) for _ in range(3)]
    wait_until("running", lambda: probe.status(in_flight)["state"] == "RUNNING", timeout_s=60)
    run(cluster, "scontrol", "update", f"JobId={job}", "TimeLimit=1")
    wait_until("the job reached its time limit", lambda: _job_state(cluster, job) in ("TIMEOUT", "GONE"),
               timeout_s=LONG, interval_s=1)
    wait_until("requeued", lambda: probe.status(in_flight)["state"] == "QUEUED", timeout_s=60)
    evicted = probe.status(in_flight)
    assert [h[0] for h in evicted["history"]][-2:] == ["EVICTED", "QUEUED"]
    slot = next(s for s in probe.slots() if s["job_id"] == job)
    assert slot["state"] == "REVOKED"
    assert {probe.status(i)["state"] for i in behind} == {"QUEUED"}  # nothing ran past the end
    other = sbatch(cluster, "-N1", "-c4", "--faas-share=cores=2", "--wrap", "sleep 600")
    jobs.append(other)
    finals = [probe.wait(i, timeout_s=LONG) for i in (in_flight, *behind)]
    assert [f["state"] for f in finals] == ["SUCCEEDED"] * 4
    assert all(f["job_id"] == other for f in finals)
    assert finals[0]["attempts"] == 2


def _job_state(cluster, job: int) -> str:
    out = run(cluster, "scontrol", "-o", "show", "job", str(job), check=False)
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


# -- two users competing for the same lent cores ------------------------------------------


@pytest.fixture
def coscheduler_config(cluster):
    """Restart the cluster's co-scheduler with a TOML configuration; back to defaults after."""
    def configure(text: str) -> None:
        cluster.restart_coscheduler(config=text)

    yield configure
    cluster.restart_coscheduler(config=None)


@pytest.fixture
def two_users(cluster, users, tmp_path_factory):
    """faas-alice and faas-bob each with function ``hold`` (sleeps; 120 s timeout), registered
    as themselves with submit-function; ``invoke(user, n, priority)`` queues n as that user."""
    batch_dir = tmp_path_factory.mktemp("batches")
    batch_dir.chmod(0o755)
    for parent in batch_dir.parents:
        if parent == Path("/"):
            break
        if not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)  # users read their batch files

    def submit(user: str, *args: str) -> str:
        out = run_as(cluster, user, ["/usr/bin/python3", "-c", "from coscheduler.cli.submit import main; main()",
                                     *args], timeout_s=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    for user in ("faas-alice", "faas-bob"):
        submit(user, "register", "hold", "--entrypoint", "probe:sleepy", "--code", str(FUNCTIONS),
               "--mem", "128M", "--timeout", "120")

    def invoke(user: str, n: int, priority: int = 0) -> list[int]:
        batch = batch_dir / f"{user}-{n}-{priority}.jsonl"
        batch.write_text("60\n" * n)
        batch.chmod(0o644)
        doc = json.loads(submit(user, "invoke", "hold", "--batch", str(batch), "--priority", str(priority),
                                "-o", "json"))
        return [int(i) for i in doc["invocation_ids"]]

    return invoke


def _running_by_user(client, ids: dict[str, list[int]], job: int) -> dict[str, int]:
    out = {}
    for user, mine in ids.items():
        rows = client.list(ids=mine, limit=len(mine), all_users=True)
        out[user] = sum(1 for r in rows if r["state"] == "RUNNING" and r.get("job_id") == job)
    return out


def _compete(cluster, client, jobs, queued: dict[str, list[int]], cores: int, expect: dict[str, int]) -> int:
    """Lend ``cores`` cores; wait until the expected invocations run on them; return the job."""
    job = sbatch(cluster, "-N1", "-c8", f"--faas-share=cores={cores}", "--wrap", "sleep 600")
    jobs.append(job)
    total = sum(expect.values())
    wait_until(f"{total} running", lambda: sum(_running_by_user(client, queued, job).values()) >= total,
               timeout_s=90, interval_s=0.5)
    return job


def test_fair_share_weights_give_a_user_more_of_the_lent_cores(cluster, probe, jobs, two_users, users,
                                                                 coscheduler_config):
    alice, bob = users["faas-alice"].pw_uid, users["faas-bob"].pw_uid
    coscheduler_config(f"[shares]\n{alice} = 3.0\n{bob} = 1.0\n")
    _no_other_lends(probe)
    queued = {"faas-alice": two_users("faas-alice", 8), "faas-bob": two_users("faas-bob", 8)}
    try:
        # Four cores for sixteen invocations: alice's weight 3 gets three of them.
        job = _compete(cluster, probe, jobs, queued, cores=4, expect={"faas-alice": 3, "faas-bob": 1})
        assert _running_by_user(probe, queued, job) == {"faas-alice": 3, "faas-bob": 1}
    finally:
        _cancel_all(probe, queued)


def test_per_user_running_quotas_and_priorities(cluster, probe, jobs, two_users, users, coscheduler_config):
    """Everyone may run 1 at a time, bob 3; bob's urgent class goes first."""
    bob = users["faas-bob"].pw_uid
    coscheduler_config(f"[quotas]\nmax_running = 1\n[quotas.users.{bob}]\nmax_running = 3\n")
    _no_other_lends(probe)
    queued = {"faas-alice": two_users("faas-alice", 6), "faas-bob": two_users("faas-bob", 6)}
    urgent: list[int] = []
    try:
        job = _compete(cluster, probe, jobs, queued, cores=6, expect={"faas-alice": 1, "faas-bob": 3})
        # Two cores stay free for anyone else: root's invocation runs there at once,
        # which also proves the scheduler passed with room and still gave the users no more.
        _register(probe, "fits", 60)
        other = probe.wait(probe.invoke("fits", json.dumps("room")), timeout_s=60)
        assert other["state"] == "SUCCEEDED" and other["job_id"] == job
        assert _running_by_user(probe, queued, job) == {"faas-alice": 1, "faas-bob": 3}
        # Priority: alice queues first in class 0, bob later in class 5; when bob's quota
        # frees (his running ones cancelled) his urgent ones take it before alice's class 0.
        urgent += two_users("faas-bob", 3, priority=5)
        _cancel_all(probe, {"faas-bob": queued["faas-bob"]})
        wait_until("bob's urgent ones run", lambda: sum(
            1 for r in probe.list(ids=urgent, limit=3, all_users=True) if r["state"] == "RUNNING") == 3, timeout_s=90, interval_s=0.5)
        assert _running_by_user(probe, {"faas-alice": queued["faas-alice"]}, job) == {"faas-alice": 1}
    finally:
        _cancel_all(probe, {**queued, "urgent": urgent})


def _cancel_all(client, queued: dict[str, list[int]]) -> None:
    """Leave the shared queue empty for the next test (root may cancel anyone's)."""
    for ids in queued.values():
        for row in client.list(ids=ids, limit=len(ids), all_users=True):
            if row["state"] in ("QUEUED", "DISPATCHED", "RUNNING"):
                client.cancel(row["invocation_id"])
