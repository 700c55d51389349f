"""Fixtures of the runtime tests: unprivileged users, a Python image, an agent
driven step by step without a cluster. Import the fixtures into a test module to use them."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import missing

from .helpers import FUNCTIONS

USERS = ("faas-alice", "faas-bob")
TEAM = "faas-team"  # alice's supplementary group


def ensure_users() -> dict[str, pwd.struct_passwd]:
    if os.geteuid() != 0:
        missing("creating unprivileged test users needs root")
    if shutil.which("useradd") is None:
        missing("useradd is not installed (Debian package passwd)")
    try:
        grp.getgrnam(TEAM)
    except KeyError:
        subprocess.run(["groupadd", "--system", TEAM], check=True, capture_output=True)
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            extra = ["-G", TEAM] if user == "faas-alice" else []
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "--home-dir", "/nonexistent", *extra, user], check=True, capture_output=True)
    return {u: pwd.getpwnam(u) for u in USERS}


@pytest.fixture(scope="session")
def users():
    return ensure_users()


def require_cgroups() -> None:
    if os.geteuid() != 0:
        missing("cgroup confinement tests need root")
    if not Path("/sys/fs/cgroup/cpuset/cgroup.procs").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        missing("no writable cgroup hierarchy")


@pytest.fixture(scope="session")
def python_image():
    """A Charliecloud image directory with the host's Debian Python (no registry)."""
    if shutil.which("ch-run") is None:
        missing("ch-run is not installed (Debian package charliecloud-runtime; make deps)")
    if not Path("/usr/bin/python3").exists():
        missing("/usr/bin/python3 is missing (Debian package python3)")
    from faas_runtime.images import build_from_host

    root = Path(tempfile.mkdtemp(prefix="faas-image-"))
    root.chmod(0o755)
    image = build_from_host(root / "python")
    yield image
    shutil.rmtree(root, ignore_errors=True)


class AgentHarness:
    """A real Agent (real cgroups, real executors) whose messages to the co-scheduler are
    recorded instead of sent; tests feed it RUN messages and step its loop."""

    def __init__(self, workdir: Path, **options):
        from faas_runtime import protocol as P
        from faas_runtime.agent import Agent, Slot

        self.P = P
        self.agent = Agent(node="t1", spool=workdir / "spool", endpoint="tcp://127.0.0.1:9", workdir=workdir / "agent",
                           **options)
        self.sent: list[tuple[str, dict]] = []
        self.agent.send = lambda kind, **f: self.sent.append((kind, f))
        self.agent.welcomed = True  # as after a WELCOME: reports go out (to self.sent)
        self.Slot = Slot
        self._ids = iter(range(1, 10_000))

    def lend(self, job_id: int, os_cpus: list[int], mem_mb: int = 4096, end_time: float = 0) -> str:
        rec = {"version": 1, "state": "lent", "job_id": job_id, "node": "t1", "uid": 0, "gid": 0,
               "slurm_cpus": list(range(len(os_cpus))), "os_cpus": os_cpus, "mem_mb": mem_mb, "end_time": end_time}
        self.agent._apply_record(rec)
        return f"{job_id}@t1"

    def run(self, slot_id: str, entrypoint: str, payload_json: str = "null", *, user=None, mem_mb: int = 128,
            timeout_s: float = 30, os_cpus=None, image=None, runtime=None, code_dir=str(FUNCTIONS),
            cpus=None) -> int:
        """Feed the agent a RUN; ``cpus``: the lent Slurm cores it holds (the co-scheduler
        always names them; without them the agent starts it at once)."""
        inv = next(self._ids)
        slot = self.agent.slots[slot_id]
        if cpus is not None and os_cpus is None:
            os_cpus = sorted({slot.record["os_cpus"][c] for c in cpus})
        msg = {"v": 1, "type": "run", "invocation_id": inv, "attempt": 1, "slot_id": slot_id, "job_id": slot.job_id,
               **({"cpus": list(cpus)} if cpus is not None else {}),
               "os_cpus": os_cpus or sorted(set(slot.record["os_cpus"])), "mem_mb": mem_mb, "timeout_s": timeout_s,
               "uid": user.pw_uid if user else 0, "entrypoint": entrypoint,
               "code_dir": code_dir, "payload_json": payload_json, "image": image, "runtime": runtime}
        self.agent._dispatch(msg)
        return inv

    def step(self) -> None:
        self.agent.poller.poll(timeout=20)
        self.agent.step_executors()
        self.agent.step_reap()

    def outcome(self, inv: int, timeout_s: float = 30.0) -> tuple[str, dict]:
        """Step until the agent reports RESULT or EVICTED for ``inv``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for kind, f in self.sent:
                if kind in (self.P.RESULT, self.P.EVICTED) and f.get("invocation_id") == inv:
                    return kind, f
            self.step()
        raise AssertionError(f"no outcome for invocation {inv} after {timeout_s} s; sent: {self.sent}")

    def close(self) -> None:
        self.agent.grace_s = min(self.agent.grace_s, 1.0)
        self.agent.shutdown()


@pytest.fixture
def harness(tmp_path_factory):
    made = []

    def make(**options) -> AgentHarness:
        require_cgroups() if options.get("cgroups", True) else None
        root = Path(tempfile.mkdtemp(prefix="faas-agent-"))
        root.chmod(0o755)
        h = AgentHarness(root, **{"allow_root": True, **options})
        made.append((h, root))
        return h

    yield make
    for h, root in made:
        h.close()
        shutil.rmtree(root, ignore_errors=True)
