"""Each attack of the multi-user trust issue, made as a real unprivileged user against the
real dev cluster: it fails with a typed error, the daemon stays up, nothing is lost or
run twice. (The same attacks, with their costs, are measured in bench/bench_trust.py.)"""
from __future__ import annotations

import collections
import json
import os
import pwd
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from coscheduler.tools.devcluster import Component
from faas_runtime.queue_client import Client
from tests.integration.helpers import FUNCTIONS, active_slot, sbatch, wait_until

TYPED = {"auth", "invalid", "too-large", "quota", "not-found", "unknown-agent", "busy"}


def _coscheduler_pid(cluster) -> int:
    pid = cluster.pid_of(Component("faas-coscheduler", "coscheduler.daemon"))
    assert pid is not None, "the co-scheduler is not running"
    return pid


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def lending_job(cluster, client, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--mem=4G", "--faas-share=cores=4,mem=2G", "--wrap", "sleep 600")
    jobs.append(job)
    return active_slot(client, job)


# -- 1. posing as an agent ---------------------------------------------------------------------


def test_a_user_cannot_act_as_an_agent(cluster, attack, probe, lending_job):
    before = set(probe.agents())
    victim = probe.invoke("sleepy", "2")
    wait_until("victim running", lambda: probe.status(victim)["state"] == "RUNNING", timeout_s=30)
    got = attack("faas-alice", "pose_as_agent", node=lending_job["node"], job_id=lending_job["job_id"],
                 victim=victim, lease_id="L-victim")
    assert got.pop("hello-unsigned") == "auth"
    assert got.pop("hello-as-user") == "auth"  # a real munge credential, but not root's
    assert set(got.values()) == {"unknown-agent"}, got  # no session: nothing it says is taken
    final = probe.wait(victim, timeout_s=60)
    assert (final["state"], final["attempts"]) == ("SUCCEEDED", 1)
    assert json.loads(probe.result_json(victim)) == "slept"  # the real result, not the forged one
    slots = {s["slot_id"]: s for s in probe.slots()}
    assert slots[lending_job["slot_id"]]["state"] == "ACTIVE"  # the forged REVOKE did nothing
    assert f"999999@{lending_job['node']}" not in slots  # nor the forged LEND
    assert set(probe.agents()) == before  # the real agents kept their sessions


# -- 2. choosing the group ---------------------------------------------------------------------


def test_the_group_is_never_the_clients_to_choose(cluster, attack, as_user, run_to_end, users, lending_job):
    assert attack("faas-alice", "choose_group") == {"0": "invalid", "-1": "invalid",
                                                   str(users["faas-alice"].pw_gid): "invalid"}
    out = as_user("faas-alice", "register", "who", "--entrypoint", "runtime_probe:whoami", "--code", str(FUNCTIONS),
                  "--mem", "128M", "--timeout", "30")
    assert out.returncode == 0, out.stderr
    value = run_to_end("faas-alice", "who", '"x"')["result"]
    alice = users["faas-alice"]
    assert value["uid"] == alice.pw_uid and value["gid"] == alice.pw_gid
    assert sorted(value["groups"]) == sorted(set(os.getgrouplist(alice.pw_name, alice.pw_gid)))


# -- 3. making root read a path the function controls -----------------------------------------


def test_root_never_reads_what_the_function_links(cluster, as_user, run_to_end, users, lending_job):
    shadow = Path("/etc/shadow").read_text(errors="replace").splitlines()[0]
    for name, ep in (("shadow", "hostile:shadow_via_log"), ("ctl", "hostile:ctl_dir_writable")):
        out = as_user("faas-alice", "register", name, "--entrypoint", ep, "--code", str(FUNCTIONS),
                      "--mem", "128M", "--timeout", "30", "--max-attempts", "1")
        assert out.returncode == 0, out.stderr
    doc = run_to_end("faas-alice", "shadow")
    assert doc["state"] == "FAILED" and "exited 3 without a result" in doc["error"], doc
    assert shadow not in doc["error"] and "root:" not in doc["error"]
    doc = run_to_end("faas-alice", "ctl")
    assert doc["result"]["writable"] is False, doc  # the socket's directory is root's
    # An image that is a FIFO: the agent looks at it as alice, without blocking, and refuses.
    fifo_dir = Path(tempfile.mkdtemp(prefix="faas-fifo-"))
    os.chown(fifo_dir, users["faas-alice"].pw_uid, users["faas-alice"].pw_gid)
    fifo = fifo_dir / "image.sqfs.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, users["faas-alice"].pw_uid, users["faas-alice"].pw_gid)
    try:
        out = as_user("faas-alice", "register", "fifo", "--entrypoint", "runtime_probe:whoami", "--code",
                      str(FUNCTIONS), "--image", str(fifo), "--runtime", "charliecloud", "--max-attempts", "1")
        assert out.returncode == 0, out.stderr
        doc = run_to_end("faas-alice", "fifo")
        assert doc["state"] == "FAILED" and "cannot run" in doc["error"], doc
        # ...and the agent was not hung by it: the next invocation on the same node runs.
        assert run_to_end("faas-alice", "ctl")["state"] == "SUCCEEDED"
    finally:
        fifo.unlink()
        fifo_dir.rmdir()


# -- 4. reading everyone's payloads --------------------------------------------------------------


def test_the_queue_logs_spool_and_run_dirs_are_private(cluster, attack, probe, lending_job):
    probe.wait(probe.invoke("where", '"secret payload"'), timeout_s=60)
    db = Path(cluster.db_url.removeprefix("sqlite:///"))
    private = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    assert db in private
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    records = list((cluster.spool / lending_job["node"]).glob("*.json"))
    logs = [cluster.root / "log" / "coscheduler.log", cluster.root / "log" / f"agent-{lending_job['node']}.log"]
    got = attack("faas-bob", "read_paths", paths=[str(p) for p in (*private, *records, *logs)])
    assert set(got.values()) == {"PermissionError"}, got
    exec_root = cluster.root / "agent" / lending_job["node"] / "exec"
    got = attack("faas-bob", "read_paths", paths=[str(exec_root)])  # cannot even list the run dirs
    assert set(got.values()) <= {"PermissionError", "IsADirectoryError"}
    assert not os.access(exec_root, os.R_OK) or stat.S_IMODE(exec_root.stat().st_mode) == 0o711


# -- 5. stalling the service -----------------------------------------------------------------------


def test_every_unbounded_field_gets_a_typed_error(attack):
    got = attack("faas-alice", "bad_fields")
    assert got.pop("register-good") == "ok"
    assert got.pop("batch 1,000,000") == "quota"  # the default per-user quota (100,000)
    assert set(got.values()) <= TYPED - {"quota"}, got
    assert "internal" not in got.values()


def test_floods_leave_the_loop_answering(cluster, attack):
    pid = _coscheduler_pid(cluster)
    rss = _rss_mb(pid)
    assert attack("faas-alice", "big_frame", mib=256) == {"answered": False, "ping-after": "ok"}
    assert _rss_mb(pid) < rss + 64  # the frame was refused before it was buffered
    assert attack("faas-alice", "frames", parts=3) == {"answered": False, "ping-after": "ok"}
    got = attack("faas-bob", "bogus_credentials", n=8000)
    assert got["codes"] == {"auth": 8000}  # every one refused, with a typed reply
    assert set(got["pings"]) == {"ok"} and len(got["pings"]) >= 2  # the loop kept answering meanwhile
    assert _coscheduler_pid(cluster) == pid


def test_a_bulk_cancel_of_100000_is_written_in_chunks_and_the_loop_keeps_answering(cluster, client):
    # 64 cores: no lend ever fits it, so all 100,000 stay queued until the cancel.
    client.register(name="never-fits", entrypoint="probe:where", code_dir=str(FUNCTIONS), cores=64, mem_mb=64,
                    timeout_s=10)
    ids = client.invoke_batch("never-fits", ["null"] * 100_000, chunk=1_000)
    pings: list[str] = []
    stop = threading.Event()

    def ping() -> None:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=30) as c:
            while not stop.is_set():
                pings.append("ok" if c.ping().get("pong") else "no")
                time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket), timeout_s=300) as c:
            assert c.cancel_function("never-fits") == 100_000
    finally:
        stop.set()
        pinger.join(30)
    assert client.function("never-fits")["invocations"] == {"CANCELLED": 100_000}
    assert len(pings) >= 5 and set(pings) == {"ok"}
    assert client.status(ids[-1])["state"] == "CANCELLED"


# -- 6. running work twice -------------------------------------------------------------------------


def _runs(log: Path) -> collections.Counter:
    return collections.Counter(log.read_text().split())


@pytest.fixture
def run_log(client):
    client.register(name="record", entrypoint="hostile:record", code_dir=str(FUNCTIONS), cores=1, mem_mb=64,
                    timeout_s=60, max_attempts=5)
    d = Path(tempfile.mkdtemp(prefix="faas-runs-"))
    log = d / "runs.log"
    log.touch()
    yield log
    log.unlink()
    d.rmdir()


def test_kill_9_of_the_coscheduler_runs_nothing_twice(cluster, client, lending_job, run_log):
    keys = [f"k{n}" for n in range(500)]
    ids = client.invoke_batch("record", [json.dumps({"log": str(run_log), "key": k, "s": 0.02}) for k in keys])
    wait_until("100 done", lambda: sum(r["state"] == "SUCCEEDED" for r in client.list(ids=ids, limit=500)) >= 100,
               timeout_s=120, interval_s=0.1)
    os.kill(_coscheduler_pid(cluster), signal.SIGKILL)
    time.sleep(1.0)  # agents finish what they hold and keep its results for the next co-scheduler
    cluster.up(timeout_s=60)
    rows = client.wait_many(ids, timeout_s=300)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    runs = _runs(run_log)
    assert sorted(runs) == sorted(keys)  # nothing lost
    assert {k: n for k, n in runs.items() if n > 1} == {}  # nothing ran twice


def test_an_agent_stopped_for_30_s_keeps_its_work(cluster, client, lending_job, run_log):
    node = lending_job["node"]
    agent = cluster.pid_of(Component(f"faas-agent-{node}", "faas_runtime.agent"))
    ids = [client.invoke("record", json.dumps({"log": str(run_log), "key": f"s{n}", "s": 8})) for n in range(4)]
    wait_until("4 running", lambda: all(client.status(i)["state"] == "RUNNING" for i in ids), timeout_s=60)
    os.kill(agent, signal.SIGSTOP)
    try:
        time.sleep(30)
        assert all(client.status(i)["state"] == "RUNNING" for i in ids)  # not requeued: the agent has a grace
    finally:
        os.kill(agent, signal.SIGCONT)
    finals = [client.wait(i, timeout_s=60) for i in ids]
    assert [(f["state"], f["attempts"]) for f in finals] == [("SUCCEEDED", 1)] * 4
    assert _runs(run_log) == {f"s{n}": 1 for n in range(4)}
