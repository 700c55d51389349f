"""faas-admin analyze reads the jobcomp/filetxt log that the real dev cluster writes."""
import json

from .helpers import job_state, run, sbatch, wait_until


def test_analyze_reads_the_clusters_jobcomp_log(cluster, jobs):
    job = sbatch(cluster, "-N1", "-c2", "--wrap", "sleep 1")
    jobs.append(job)
    log = cluster.root / "log" / "jobcomp.txt"
    wait_until("job in jobcomp log", lambda: log.exists() and f"JobId={job} " in log.read_text(), timeout_s=30)
    out = run(cluster, "faas-admin", "analyze", str(log), "--capacity", "24", "--json")
    doc = json.loads(out.stdout)
    assert doc["format"] == "jobcomp"
    assert doc["parse"]["malformed"]["count"] == 0
    assert doc["parse"]["jobs"] == len(log.read_text().splitlines()) >= 1
    assert job_state(cluster, job) in ("COMPLETED", "GONE")
