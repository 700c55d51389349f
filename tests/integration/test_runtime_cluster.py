"""The runtime against the real dev cluster: unprivileged users end to end, a function in
a Charliecloud image, and eviction of 50 running invocations by scancel."""
import json
import subprocess
import sys
import time
from pathlib import Path

from faas_runtime.queue_client import Client
from faas_runtime.states import TERMINAL, State

from .helpers import FUNCTIONS, active_slot, run, sbatch, wait_until
from .runtime_fixtures import python_image, users  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]


def as_user(cluster, user: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """submit-function as ``user``: the system Python with this checkout and its venv's packages
    (the venv's own interpreter lives under /root here, which other users cannot reach)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": f"{REPO}:{site}", **cluster.env()}
    argv = ["runuser", "-u", user, "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
            "/usr/bin/python3", "-c", "from coscheduler.cli.submit import main; main()", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd="/")
    if check and out.returncode != 0:
        raise AssertionError(f"{args} as {user} failed: {out.stderr or out.stdout}")
    return out


def test_an_unprivileged_user_submits_and_the_function_runs_as_them(cluster, users, jobs):
    alice, bob = users["faas-alice"], users["faas-bob"]
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket)) as root_client:
        active_slot(root_client, job)
    as_user(cluster, "faas-alice", "register", "who", "--entrypoint", "runtime_probe:whoami",
            "--code", str(FUNCTIONS), "--mem", "128M", "--timeout", "30")
    out = as_user(cluster, "faas-alice", "invoke", "who", "--payload", '"from alice"', "--wait",
                  "--wait-timeout", "60", "-o", "json")
    doc = json.loads(out.stdout)
    value = doc["result"]
    assert value["uid"] == alice.pw_uid and value["gid"] == alice.pw_gid  # munge proved it, the agent ran as it
    assert 0 not in value["groups"] and value["echo"] == "from alice"
    # bob cannot read alice's result (and does not even learn it exists)
    other = as_user(cluster, "faas-bob", "result", str(doc["invocation_id"]), check=False)
    assert other.returncode != 0 and "of yours" in other.stderr
    assert bob.pw_uid != alice.pw_uid


def test_a_function_registered_with_an_image_runs_in_it(cluster, client, jobs, python_image):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120")
    jobs.append(job)
    active_slot(client, job)
    client.register(name="in-image", entrypoint="runtime_probe:whoami", code_dir=str(FUNCTIONS), mem_mb=128,
                    timeout_s=30, image=str(python_image), runtime="charliecloud")
    final = client.wait(client.invoke("in-image", '"x"'), timeout_s=60)
    assert final["state"] == "SUCCEEDED", final
    value = json.loads(client.result_json(final["invocation_id"]))
    assert value["container"] and value["code"] == "/faas/code" and value["python"] == "/usr/bin/python3"
    # a missing image fails the invocation with the reason, at once
    client.register(name="no-image", entrypoint="runtime_probe:whoami", code_dir=str(FUNCTIONS), mem_mb=128,
                    timeout_s=30, image="/nonexistent/image", runtime="charliecloud", max_attempts=1)
    final = client.wait(client.invoke("no-image", "null"), timeout_s=30)
    assert final["state"] == "FAILED" and "/nonexistent/image does not exist" in final["error"]


def test_fifty_invocations_survive_scancel_of_the_lending_job(cluster, client, jobs):
    client.register(name="two-seconds", entrypoint="runtime_probe:sleep", code_dir=str(FUNCTIONS), mem_mb=64,
                    timeout_s=30, max_attempts=5)
    first = sbatch(cluster, "-N1", "-c8", "--mem=4G", "--faas-share=cores=4,mem=2G", "--wrap", "sleep 300")
    jobs.append(first)
    active_slot(client, first)
    ids = [client.invoke("two-seconds", "2") for _ in range(50)]

    def states():
        return {i: client.status(i) for i in ids}

    wait_until("some done, some running", lambda: (lambda st: sum(s["state"] == "SUCCEEDED" for s in st.values()) >= 4
               and sum(s["state"] == "RUNNING" for s in st.values()) >= 2)(states()), timeout_s=90, interval_s=0.2)
    run(cluster, "scancel", str(first))
    second = sbatch(cluster, "-N1", "-c8", "--mem=4G", "--faas-share=cores=4,mem=2G", "--wrap", "sleep 300")
    jobs.append(second)
    finals = {}
    deadline = time.monotonic() + 240
    while len(finals) < len(ids) and time.monotonic() < deadline:
        for i in ids:
            if i not in finals:
                st = client.status(i)
                if State(st["state"]) in TERMINAL:
                    finals[i] = st
        time.sleep(0.5)
    assert len(finals) == 50, f"lost: {sorted(set(ids) - set(finals))}"
    assert {f["state"] for f in finals.values()} == {"SUCCEEDED"}
    evicted = [f for f in finals.values() if any(h[0] == "EVICTED" for h in f["history"])]
    assert evicted, "scancel evicted nothing: the test did not test eviction"
    for f in finals.values():
        states_seen = [h[0] for h in f["history"]]
        assert states_seen.count("SUCCEEDED") == 1 and states_seen[-1] == "SUCCEEDED"
        assert f["job_id"] in (first, second)
    for f in evicted:  # re-run on the other lending job's cores
        assert f["job_id"] == second and f["attempts"] >= 2
