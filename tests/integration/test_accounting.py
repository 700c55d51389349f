"""Real accounting on the dev cluster (slurmdbd + MariaDB): ``sacct`` lists the jobs the
tests ran, and ``faas-admin analyze --sacct`` reads them."""
import datetime as dt
import json

from tests.conftest import missing

from .helpers import job_state, run, sbatch, wait_until


def _sacct(cluster, *args: str) -> list[list[str]]:
    out = run(cluster, "sacct", "-a", "-P", "-n", *args)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def test_sacct_and_analyze_see_the_jobs_this_test_ran(cluster, jobs):
    if not cluster.accounting:
        missing("the dev cluster runs without slurmdbd: install mariadb-server and slurmdbd (make deps)")
    since = (dt.datetime.now() - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    ran = []
    for time_limit, share in (("--time=3", "--faas-share=cores=1"), ("--time=2", "--faas-share=cores=1,until=1")):
        job = sbatch(cluster, "-N1", "-c2", time_limit, share, "--wrap", "sleep 1")
        jobs.append(job)
        ran.append(job)
    for job in ran:
        wait_until(f"job {job} over", lambda: job_state(cluster, job) in ("COMPLETED", "GONE"), timeout_s=90)
        # slurmctld sends the job's start and end to slurmdbd on its own time, not always in
        # that order: wait for the whole record (its time limit comes with the start)
        wait_until(f"job {job} in sacct", lambda: any(
            r[0] == str(job) and r[1] == "COMPLETED" and r[2] for r in _sacct(
                cluster, "-j", str(job), "-X", "-o", "JobID,State,Timelimit,NCPUS")),
            timeout_s=60, interval_s=0.5)
    rows = {r[0]: r for r in _sacct(cluster, "-X", "-j", ",".join(map(str, ran)), "-o", "JobID,State,Timelimit,NCPUS")}
    assert rows[str(ran[0])][2:] == ["00:03:00", "2"] and rows[str(ran[1])][2:] == ["00:02:00", "2"]
    # what analyze reads is what sacct says: every job since `since`, none malformed
    jobs_since = _sacct(cluster, "-X", "-S", since, "-o", "JobID")
    out = run(cluster, "faas-admin", "analyze", "--sacct", "--since", since, "--capacity", "24", "--json")
    doc = json.loads(out.stdout)
    assert doc["format"] == "sacct"
    assert doc["parse"]["malformed"]["count"] == 0
    assert doc["parse"]["jobs"] >= len(jobs_since) >= len(ran)
