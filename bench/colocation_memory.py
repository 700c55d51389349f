"""The remote-memory side of bench/bench_colocation.py (``--remote-memory SIZE``): while hpcc
runs as the batch job, part of the job's spare memory is leased through the product and read
from elsewhere in a loop.

The reader is a process of its own (``READER``, started by ``MemoryReader``) that does what a
user would: ``slurm_faas.remote_memory(SIZE)`` (the co-scheduler places the memory server on
the job's lend, the node's agent starts it there as the user, in a cgroup covering the size,
on the lent CPUs), fills the memory once, then reads it block after block (sequentially,
wrapping) over libfabric RMA until it is stopped, checking every block's bytes. It logs
(time, bytes read) every quarter second, so the benchmark takes the bandwidth inside hpcc's
window. On the dev cluster the reader stands for a process on another node: it is pinned to
the lend's real CPU (the job's kept CPU stays the job's, as another node's CPU would); on a
site (``--site``) it runs where the benchmark runs, which is not the job's node.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

READER = r"""
import json, sys, threading, time
from slurm_faas import RemoteMemoryRevoked, remote_memory
size, block, slot_id, duration = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
stop = []  # set when stdin closes (not a signal: it would interrupt a transfer in C)
threading.Thread(target=lambda: (sys.stdin.read(), stop.append(1)), daemon=True).start()
mem = remote_memory(size, duration_s=duration, timeout_s=120)
out = {"slot_id": mem.slot_id, "cpus": mem.cpus, "samples": [], "bad_blocks": 0, "error": None}
try:
    if mem.slot_id != slot_id:
        raise SystemExit(json.dumps({"error": f"placed on {mem.slot_id}, not on the job's lend {slot_id}"}))
    buf = mem.buffer(block)
    pattern = bytes(range(256)) * (block // 256)
    buf.view[:] = pattern
    t0 = time.time()
    for off in range(0, size, block):
        mem.write(off, buf)
    out["fill_s"] = time.time() - t0
    print(json.dumps({"ready": True, "slot_id": mem.slot_id}), flush=True)
    total, off, last, n = 0, 0, 0.0, 0
    while not stop:
        mem.read_into(off, buf)
        total += block
        n += 1
        off = (off + block) % size
        now = time.time()
        if now - last >= 0.25:
            out["samples"].append((now, total))
            last = now
            out["bad_blocks"] += bytes(buf.view) != pattern  # the bytes are checked, not only moved
    out["samples"].append((time.time(), total))
    out["reads"] = n
    buf.close()
except RemoteMemoryRevoked as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
finally:
    mem.release()
print(json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class MemoryLoad:
    """What the reader leases and how it reads: bytes, block bytes, the CPUs it runs on (None:
    any; ``pin_to_lend``: the lend's OS CPUs, the dev cluster's stand-in for another node)."""
    size: int
    block: int
    cpus: Optional[tuple] = None
    pin_to_lend: bool = False
    fabric_env: tuple = ()  # (("FAAS_FABRIC", "tcp"), ...) for the reader


class MemoryReader:
    """The reader process of one co-located run: ``start`` (returns once the memory is leased
    on ``slot_id`` and filled), ``stop`` (its figures)."""

    def __init__(self, env: dict, load: MemoryLoad, lend: dict, duration_s: float, log: Path):
        self.load, self.log = load, log
        env = {**env, **dict(load.fabric_env),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))}
        cpus = set(load.cpus) if load.cpus else set(lend["os_cpus"]) if load.pin_to_lend else None
        self.cpus = sorted(cpus) if cpus else None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(load.size), str(load.block), lend["slot_id"], str(duration_s)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def _stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def wait_ready(self) -> dict:
        line = self.proc.stdout.readline()
        doc = json.loads(line) if line.strip() else {}
        if not doc.get("ready"):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the remote-memory reader did not start: {doc.get('error') or line.strip()} "
                               f"{self._stderr()}")
        return doc

    def stop(self, timeout_s: float = 60.0) -> dict:
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)  # closes its stdin: the reader stops
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            return {"error": f"the reader exited {self.proc.returncode} without figures: {self._stderr()}"}
        return json.loads(lines[-1])


def _at(samples: list, t: float) -> float:
    """Bytes read by time ``t``, interpolated between the reader's samples."""
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return samples[-1][1]


def reader_figures(doc: dict, start: float, end: float, size: int, block: int) -> dict:
    """The reader's bandwidth inside hpcc's window [start, end] (unix times), and its checks."""
    samples = doc.get("samples") or []
    out = {"size": size, "block": block, "error": doc.get("error"), "bad_blocks": doc.get("bad_blocks"),
           "reads": doc.get("reads"), "fill_s": doc.get("fill_s"), "server_cpus": doc.get("cpus")}
    covered = len(samples) >= 2 and samples[0][0] <= start + 1.0 and samples[-1][0] >= end - 1.0
    if covered and end > start:
        out["read_mb_per_s"] = (_at(samples, end) - _at(samples, start)) / (end - start) / 1e6
    else:
        out["read_mb_per_s"] = None  # the reader did not cover hpcc's window: no figure
    return out
