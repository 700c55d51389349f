"""What an idle remote-memory server costs, and what its back-off costs the next read.

    .venv/bin/python bench/bench_memory_server_idle.py [--providers tcp,shm] [--idle 5]
        [--config default] [--config "spin_us=0,nap_us=0"] ...

For each provider and server configuration (MemoryServer progress-loop options; "default"
= the built-in ones) a server process is started (``python -m faas_runtime.remote_memory``)
and a client attaches. Printed: the server's CPU use while idle (utime + stime from
/proc/PID/stat over --idle seconds, in % of one core), the latency of a 64 B read (data + epoch
check) after 0.1 s without reads, median and p90 of 20 (the server may be asleep; the
client spins meanwhile, so that only the server's wake-up counts), the median 64 B read latency under
back-to-back reads, and the bandwidth of 10 MiB reads. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faas_runtime.fabric import FabricConfig  # noqa: E402
from faas_runtime.remote_memory import RemoteMemory  # noqa: E402
from bench_fabric import serve  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(provider: str, options: dict[str, int]) -> tuple[subprocess.Popen, str]:
    argv = ["faas_runtime.remote_memory", "--size", "16M"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return serve(argv, provider)


def parse(text: str) -> dict[str, int]:
    if text == "default":
        return {}
    return {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def measure(provider: str, options: dict[str, int], idle_s: float) -> dict[str, float]:
    p, control = start(provider, options)
    try:
        with RemoteMemory(control, FabricConfig(provider, "lo" if provider == "tcp" else ""), timeout=30) as rm:
            small = rm.buffer(64)
            big = rm.buffer(10 << 20)
            rm.read_into(0, small)
            time.sleep(1.0)  # past any spin phase
            c0, t0 = cpu_s(p.pid), time.monotonic()
            time.sleep(idle_s)
            idle_cpu = (cpu_s(p.pid) - c0) / (time.monotonic() - t0) * 100
            first = []
            for _ in range(20):  # a read after 0.1 s idle (the server may be asleep)
                end = time.perf_counter() + 0.1
                while time.perf_counter() < end:  # the client spins: its CPU stays awake
                    pass
                t = time.perf_counter()
                rm.read_into(0, small)
                first.append((time.perf_counter() - t) * 1e6)
            steady = []
            for _ in range(2000):
                t = time.perf_counter()
                rm.read_into(0, small)
                steady.append((time.perf_counter() - t) * 1e6)
            reads = []
            for _ in range(50):
                t = time.perf_counter()
                rm.read_into(0, big)
                reads.append(time.perf_counter() - t)
            small.close()
            big.close()
    finally:
        p.terminate()
        p.wait(30)
    first.sort()
    return {"idle_cpu": idle_cpu, "first_us": statistics.median(first), "first_max_us": first[int(0.9 * len(first))],
            "steady_us": statistics.median(steady), "mbs": (10 << 20) / statistics.median(reads) / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="tcp,shm")
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--config", action="append", help='"default" or "spin_us=N,nap_us=M" (repeatable)')
    args = ap.parse_args()
    configs = args.config or ["default", "nap_us=0"]
    print(f"load {os.getloadavg()[0]:.2f}; idle {args.idle:g} s")
    print(f"{'provider':<8} {'server config':<24} {'idle CPU %':>10} {'1st read us':>12} {'(p90)':>8} "
          f"{'64 B read us':>12} {'10 MiB MB/s':>12}")
    for provider in args.providers.split(","):
        for config in configs:
            r = measure(provider, parse(config), args.idle)
            print(f"{provider:<8} {config:<24} {r['idle_cpu']:>10.1f} {r['first_us']:>12.1f} {r['first_max_us']:>8.0f} "
                  f"{r['steady_us']:>12.1f} {r['mbs']:>12.0f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
