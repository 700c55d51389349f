"""Small helpers for tests that drive the real dev cluster."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, TypeVar

from coscheduler.tools.devcluster_procs import poll_until

T = TypeVar("T")
FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"


def wait_until(what: str, check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05) -> T:
    value = poll_until(check, timeout_s, interval_s)
    if not value:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
    return value


def run(cluster, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command as a user would, in the cluster's environment."""
    return subprocess.run(list(argv), capture_output=True, text=True, env=cluster.client_env(), check=check,
                          timeout=60)


def sbatch(cluster, *args: str) -> int:
    """Submit a job; its output goes to the cluster's log dir unless the test says where."""
    if not any(a.startswith(("-o", "--output")) for a in args):
        args = (f"--output={cluster.root}/jobs/job-%j.out", *args)
    out = run(cluster, "sbatch", "--parsable", *args)
    return int(out.stdout.strip().split(";")[0])


def job_state(cluster, job_id: int) -> str:
    out = run(cluster, "scontrol", "-o", "show", "job", str(job_id), check=False)
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def squeue_ids(cluster) -> list[str]:
    return run(cluster, "squeue", "-h", "-o", "%i").stdout.split()


def node_states(cluster) -> dict[str, str]:
    return cluster.node_states()


def lend_record(cluster, job_id: int, node: str) -> Path:
    return cluster.spool / node / f"{job_id}.json"


def lease_for(cluster, name: str, **kw):
    """A hot-path lease of function ``name`` from this cluster's co-scheduler."""
    from faas_runtime.client import lease

    return lease(name, endpoint=cluster.coscheduler_endpoint, munge_socket=str(cluster.munge_socket), **kw)


def lease_on_slot(cluster, name: str, slot_id: str, **kw):
    """Lease ``name`` until the lease lands on ``slot_id``: work other tests left queued may
    hold the core for a moment, or other jobs' slots may be offered first."""
    return held_on_slot(slot_id, lambda: lease_for(cluster, name, duration_s=120, timeout_s=10, **kw))


def held_on_slot(slot_id: str, take):
    """``take()`` (a lease of any kind: it has ``slot_id`` and ``release()``) again until what it
    returns lies on ``slot_id``; those elsewhere are released."""
    from faas_runtime.client import LeaseUnavailable

    def attempt():
        try:
            got = take()
        except LeaseUnavailable:
            return None
        if got.slot_id != slot_id:
            got.release()
            return None
        return got

    return wait_until(f"a lease on slot {slot_id}", attempt, timeout_s=60, interval_s=0.5)


def active_slot(client, job: int, timeout_s: float = 20.0) -> dict:
    """The ACTIVE slot a job lends, once the co-scheduler has it."""
    return wait_until(f"slot of job {job}", lambda: next(
        (s for s in client.slots() if s["job_id"] == job and s["state"] == "ACTIVE"), None), timeout_s=timeout_s)


def register_runtime_probes(client, prefix: str):
    """Register the runtime probe functions as <prefix>-echo, -sleep, -who and -boom."""
    for name, ep in (("echo", "runtime_probe:echo"), ("sleep", "runtime_probe:sleep"),
                     ("who", "runtime_probe:whoami"), ("boom", "probe:boom")):
        client.register(name=f"{prefix}-{name}", entrypoint=ep, code_dir=str(FUNCTIONS), cores=1, mem_mb=128,
                        timeout_s=30)
    return client
