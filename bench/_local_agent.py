"""A real faas-agent in this process, without Slurm or a co-scheduler, for the runtime
benchmarks: lends a slot, runs RUN and LEASE_START messages, records what it would send."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from faas_runtime import protocol as P
from faas_runtime.agent import Agent

FUNCTIONS = Path(__file__).resolve().parents[1] / "tests" / "functions"


class LocalAgent:
    def __init__(self, **options):
        self.root = Path(tempfile.mkdtemp(prefix="faas-bench-"))
        self.root.chmod(0o755)
        cgroups = options.pop("cgroups", os.geteuid() == 0)
        self.agent = Agent(node="bench", spool=self.root / "spool", endpoint="tcp://127.0.0.1:9",
                           workdir=self.root / "agent", cgroups=cgroups, allow_root=True, **options)
        self.sent: list[tuple[str, dict]] = []
        self.agent.send = lambda kind, **f: self.sent.append((kind, f))
        self._ids = iter(range(1, 1 << 30))

    def lend(self, job_id: int, os_cpus: list[int], mem_mb: int = 8192) -> str:
        self.agent._apply_record({"version": 1, "state": "lent", "job_id": job_id, "node": "bench", "uid": 0,
                                  "gid": 0, "slurm_cpus": list(range(len(os_cpus))), "os_cpus": os_cpus,
                                  "mem_mb": mem_mb, "end_time": 0})
        return f"{job_id}@bench"

    def _fields(self, slot_id: str, entrypoint: str, image=None, runtime=None, mem_mb=256, uid=0, gid=0,
                code_dir=None):
        slot = self.agent.slots[slot_id]
        return {"v": P.VERSION, "slot_id": slot_id, "job_id": slot.job_id, "os_cpus": sorted(set(slot.record["os_cpus"])),
                "mem_mb": mem_mb, "uid": uid, "gid": gid, "entrypoint": entrypoint,
                "code_dir": str(code_dir or FUNCTIONS),
                "image": image, "runtime": runtime, "function_id": hash((entrypoint, image)) & 0xFFFF}

    def run(self, slot_id: str, entrypoint: str, payload_json: str = "null", timeout_s: float = 7200,
            os_cpus=None, **kw) -> int:
        inv = next(self._ids)
        fields = self._fields(slot_id, entrypoint, **kw)
        if os_cpus is not None:
            fields["os_cpus"] = sorted(os_cpus)
        self.agent._dispatch({**fields, "type": P.RUN, "invocation_id": inv, "attempt": 1, "timeout_s": timeout_s,
                              "payload_json": payload_json})
        return inv

    def step(self, timeout_ms: int = 5) -> None:
        self.agent.poller.poll(timeout=timeout_ms)
        self.agent.step_executors()
        self.agent.step_reap()

    def wait(self, inv: int, timeout_s: float = 120) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for kind, f in reversed(self.sent):
                if kind in (P.RESULT, P.EVICTED) and f.get("invocation_id") == inv:
                    return f
            self.step(1)
        raise TimeoutError(f"invocation {inv}")

    def lease(self, slot_id: str, entrypoint: str, fabric=None, **kw):
        """A HotLease on a fresh executor, granted by this agent (no co-scheduler involved).
        ``fabric``: a FabricConfig to ask for the RMA hot path with (None: ZeroMQ)."""
        from faas_runtime.client import HotLease

        lease_id = f"bench-{next(self._ids)}"
        token = os.urandom(16).hex()
        fields = self._fields(slot_id, entrypoint, **kw)
        ask = {"fabric": {"provider": fabric.provider, "domain": fabric.domain}} if fabric and fabric.enabled else {}
        self.agent._dispatch({**fields, "type": P.LEASE_START, "lease_id": lease_id, "token": token,
                              "duration_s": 3600, **ask})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for kind, f in self.sent:
                if kind == P.LEASE_READY and f["lease_id"] == lease_id:
                    return HotLease(None, lease_id, f["endpoint"], token, fields["os_cpus"], rma=f.get("rma"),
                                    fabric=fabric)
                if kind == P.LEASE_FAILED and f["lease_id"] == lease_id:
                    raise RuntimeError(f["reason"])
            self.step(5)
        raise TimeoutError("lease not ready")

    def close(self) -> None:
        self.agent.grace_s = 0.5
        self.agent.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)
