"""Remote memory through the product, on the real dev cluster (docs/fabric.md "Remote memory
on a lend"): a real user leases part of a batch job's spare memory with
``slurm_faas.remote_memory``; the memory server runs on the lend as that user, in a cgroup
of its own (memory limit covering the size, cpuset of the lent CPUs); the user writes and
reads it over RMA; another user with the stolen address and no token cannot attach or revoke
it; the job's end revokes it and the reader gets RemoteMemoryRevoked, never stale bytes;
lent memory is held by the lease, and released memory is given back. With an agent driven
step by step: the memory guard's shrink ends the lease and revokes the memory. And region
keys are not guessable where the provider leaves them to us (tcp)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from faas_runtime import fabric
from faas_runtime.client import LeaseUnavailable
from faas_runtime.queue_client import Client
from tests.adversarial.conftest import run_as, user_env
from tests.conftest import missing
from tests.integration.helpers import FUNCTIONS, active_slot, held_on_slot, run, sbatch, wait_until
from tests.integration.runtime_fixtures import harness, users  # noqa: F401  (fixtures)

SIZE = 48 << 20
FABRIC_ENV = {"FAAS_FABRIC": "tcp", "FAAS_FABRIC_DOMAIN": "lo"}  # the dev cluster's nodes are on loopback

STEAL = """
import json, sys
import zmq
from faas_runtime import protocol as P
from faas_runtime.fabric import FabricConfig
from faas_runtime.remote_memory import RemoteMemory
control = sys.argv[1]
out = {}
for name, token in (("no_token", None), ("forged_token", "x" * 32)):
    try:
        RemoteMemory(control, FabricConfig("tcp", "lo"), timeout=10, token=token).close()
        out[name] = "attached"
    except PermissionError as exc:
        out[name] = "refused: " + str(exc)
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.connect(control)
sock.send(P.encode(P.MEM_REVOKE, rid="r"))
out["revoke"] = P.decode(sock.recv()) if sock.poll(10000) else None
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def rma():
    if not fabric.available():
        missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")


def _servers(cluster) -> dict[int, Path]:
    """pid -> run directory of this cluster's memory-server processes."""
    exec_dirs = cluster.root / "agent"
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if exec_dirs in cwd.parents and b"faas_runtime.memory_lease" in cmd:
            out[int(pid)] = cwd
    return out


def _confinement(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    groups = {c: path for _, cs, path in (line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text()
                                            .splitlines()) for c in cs.split(",")}
    memory = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
    cpuset = Path("/sys/fs/cgroup/cpuset") / groups["cpuset"].lstrip("/")
    return {"uid": uid, "memory_cgroup": groups["memory"], "memory_limit": int((memory / "memory.limit_in_bytes")
                                                                                .read_text()),
            "cpus": (cpuset / "cpuset.cpus").read_text().strip(), "memory_dir": memory}


def _cpu_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def test_a_users_remote_memory_runs_as_them_refuses_others_and_ends_with_the_job(cluster, users, jobs):
    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2,mem=1G", "--wrap", "sleep 300")
    jobs.append(job)
    with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket)) as root_client:
        slot = active_slot(root_client, job, timeout_s=60)
    env = {**user_env(cluster), **FABRIC_ENV}
    alice = subprocess.Popen(["runuser", "-u", "faas-alice", "--", "/usr/bin/env", "-i",
                              *(f"{k}={v}" for k, v in env.items()), "/usr/bin/python3",
                              str(FUNCTIONS / "remote_memory_user.py"), str(SIZE), slot["slot_id"]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd="/")

    def ask(cmd: str) -> dict:
        alice.stdin.write(cmd + "\n")
        alice.stdin.flush()
        return json.loads(alice.stdout.readline())

    try:
        line = alice.stdout.readline()
        assert line, alice.stderr.read()[-3000:]
        hello = json.loads(line)
        assert hello["ok"] and hello["size"] == SIZE and hello["slot_id"] == slot["slot_id"]

        # the server: alice's, in its own cgroup with a limit that covers the size, on the lent CPUs
        servers = wait_until("the memory server process", lambda: _servers(cluster), timeout_s=10)
        (pid, run_dir), = servers.items()
        conf = _confinement(pid)
        assert conf["uid"] == users["faas-alice"].pw_uid
        assert "slurm-faas-" in conf["memory_cgroup"] and SIZE < conf["memory_limit"] < SIZE + (256 << 20)
        assert _cpu_set(conf["cpus"]) <= set(slot["os_cpus"])

        # bob has the address but no token: no attach, no revoke; alice's memory is untouched
        out = run_as(cluster, "faas-bob", ["/usr/bin/python3", "-c", STEAL, hello["control"]], timeout_s=60)
        assert out.returncode == 0, out.stderr[-2000:]
        stolen = json.loads(out.stdout)
        assert stolen["no_token"].startswith("refused") and stolen["forged_token"].startswith("refused")
        assert stolen["revoke"]["type"] == "error" and stolen["revoke"]["code"] == "auth"
        assert ask("read") == {"ok": True}

        # the job ends while alice reads: RemoteMemoryRevoked with the reason, never other bytes
        alice.stdin.write("until-revoked\n")
        alice.stdin.flush()
        time.sleep(0.5)  # reads under way when the job ends
        run(cluster, "scancel", str(job))
        end = json.loads(alice.stdout.readline())
        assert end["error"] in ("RemoteMemoryRevoked", "RemoteMemoryLost"), end
        assert end["stale"] == 0 and end["reads"] > 0 and "revoked" in end["reason"]
        # and the server is gone with its cgroup: the memory is the job's again
        wait_until("the memory server to exit", lambda: pid not in _servers(cluster), timeout_s=30)
        wait_until("its cgroup to be removed", lambda: not conf["memory_dir"].exists(), timeout_s=30)
        assert ask("release") == {"released": True}
    finally:
        alice.kill()
        alice.wait()


def _lease_on(cluster, slot_id: str, size: str):
    from slurm_faas import remote_memory

    return held_on_slot(slot_id, lambda: remote_memory(
        size, endpoint=cluster.coscheduler_endpoint, munge_socket=str(cluster.munge_socket), duration_s=120,
        timeout_s=20, fabric=fabric.FabricConfig("tcp", "lo")))


def test_remote_memory_holds_lent_memory_until_released(cluster, jobs):
    from slurm_faas import remote_memory

    job = sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2,mem=1G", "--wrap", "sleep 300")
    jobs.append(job)
    with Client(cluster.coscheduler_endpoint, str(cluster.munge_socket)) as c:
        slot_id = active_slot(c, job, timeout_s=60)["slot_id"]
    first = _lease_on(cluster, slot_id, "600M")
    try:
        first.write(0, b"held")
        # the lend's other 400 MiB do not hold a second 600 MiB: refused, or placed on another job's lend
        try:
            second = remote_memory("600M", endpoint=cluster.coscheduler_endpoint,
                                   munge_socket=str(cluster.munge_socket), timeout_s=10,
                                   fabric=fabric.FabricConfig("tcp", "lo"))
        except LeaseUnavailable as exc:
            assert "no lent capacity" in str(exc) or "no lend" in str(exc)
        else:
            assert second.slot_id != slot_id
            second.release()
        with pytest.raises(LeaseUnavailable):
            remote_memory("64G", endpoint=cluster.coscheduler_endpoint, munge_socket=str(cluster.munge_socket),
                          timeout_s=10, fabric=fabric.FabricConfig("tcp", "lo"))
        pid = next(iter(_servers(cluster)))
    finally:
        first.release()
    wait_until("the released server to exit", lambda: pid not in _servers(cluster), timeout_s=30)
    # the memory is free again: a second 600 MiB fits the same lend now
    again = _lease_on(cluster, slot_id, "600M")
    assert again.read(0, 4) == b"\0\0\0\0"  # fresh memory, nothing of the first lease's
    again.release()


def test_region_keys_are_not_guessable_where_the_provider_takes_ours():
    """tcp;ofi_rxm leaves memory keys to us (mr_mode without FI_MR_PROV_KEY): the key is then
    all that guards a region from whoever reaches the endpoint, so it starts at a random
    number (csrc/fabric_endpoint.c), not at 1. (Needs the binding rebuilt: make venv.)"""
    first, second = (fabric.Endpoint(fabric.FabricConfig("tcp", "lo")) for _ in range(2))
    try:
        keys = [ep.register(size=64).key for ep in (first, second)]
        assert min(keys) > 1 << 32 and keys[0] != keys[1]
    finally:
        first.close()
        second.close()


def test_the_memory_guard_ends_a_memory_lease_first_its_reader_sees_the_revoke(harness, users):
    """An agent driven step by step (real cgroups, the real server process as faas-alice): the
    lend shrinks to nothing (``MemoryGuard._shrink``, what the guard does when the job grows),
    the lease ends with the guard's reason and the reader gets RemoteMemoryRevoked."""
    from faas_runtime import protocol as P
    from faas_runtime.remote_memory import RemoteMemory, RemoteMemoryRevoked

    tcp = fabric.FabricConfig("tcp", "lo")
    h = harness(fabric=tcp)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    slot = h.lend(5, [cpu], mem_mb=1024)
    token = os.urandom(16).hex()
    h.agent._dispatch({"v": P.VERSION, "type": P.LEASE_START, "kind": "memory", "lease_id": "Lm-1", "token": token,
                       "slot_id": slot, "job_id": 5, "os_cpus": [cpu], "mem_mb": 16 + 128, "size_bytes": 16 << 20,
                       "uid": users["faas-alice"].pw_uid, "duration_s": 600,
                       "fabric": {"provider": "tcp", "domain": "lo"}})
    ready = wait_until("LEASE_READY", lambda: h.step() or next(
        (f for k, f in h.sent if k == P.LEASE_READY and f["lease_id"] == "Lm-1"), None), timeout_s=60)
    (ex,) = h.agent.executors.values()
    conf = _confinement(ex.proc.pid)
    assert conf["uid"] == users["faas-alice"].pw_uid and conf["memory_limit"] == (16 + 128) << 20
    assert _cpu_set(conf["cpus"]) == {cpu}
    with RemoteMemory(ready["rma"]["control"], tcp, timeout=20, token=token) as rm:
        rm.write(0, b"spare")
        assert rm.read(0, 5) == b"spare"
        h.agent._shrink(h.agent.slots[slot], 0)  # the job needs all of its memory back
        ended = wait_until("LEASE_ENDED", lambda: h.step() or next(
            (f for k, f in h.sent if k == P.LEASE_ENDED and f["lease_id"] == "Lm-1"), None), timeout_s=30)
        assert "shrank" in ended["reason"]
        wait_until("the server to be reaped", lambda: h.step() or not h.agent.executors, timeout_s=30)
        with pytest.raises(RemoteMemoryRevoked):
            rm.read(0, 5)
