"""Slowdown of a memory-bound batch kernel while its node serves remote memory.

    .venv/bin/python bench/bench_remote_memory_interference.py [--providers tcp,shm]
        [--seconds 5] [--rounds 3] [--mib 256] [--block-mib 10]

The batch job is bench/stream_triad.c (STREAM triad over three arrays of --mib MiB, far
beyond the caches), compiled here and pinned to CPU 0. The guest is the remote-memory
function of slurm-faas: a MemoryServer (``python -m faas_runtime.remote_memory``) on the
same node, and a RemoteMemory client reading --block-mib MiB blocks from it in a loop,
both pinned to CPU 1 (the lent core). Each round measures the kernel alone, then while the
client reads (server and client started for that phase only), in alternation so that
load from elsewhere on the machine hits both sides alike. Printed: the kernel's median
bandwidth alone and under remote-memory traffic, the slowdown in % (the paper saw
0.2-7.4 % for MILC), and the client's read bandwidth. No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_fabric import fabric_env, serve  # noqa: E402

KERNEL_CPU, GUEST_CPU = 0, 1

CLIENT = """
import sys, time
from faas_runtime.fabric import FabricConfig
from faas_runtime.remote_memory import RemoteMemory
control, provider, block, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with RemoteMemory(control, FabricConfig(provider, "lo" if provider == "tcp" else ""), timeout=30) as rm:
    buf = rm.buffer(block)
    rm.read_into(0, buf)
    print("reading", flush=True)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        rm.read_into(0, buf)
        n += 1
    dt = time.monotonic() - t0
    buf.close()
print(f"reads={n} mbs={n * block / dt / 1e6:.1f}", flush=True)
"""


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def build_kernel() -> Path:
    out = ROOT / "build" / "stream_triad"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["cc", "-O2", "-o", str(out), str(ROOT / "bench" / "stream_triad.c")], check=True)
    return out


def kernel(binary: Path, mib: int, seconds: float) -> float:
    run = subprocess.run([str(binary), str(mib), str(seconds)], capture_output=True, text=True, check=True,
                         preexec_fn=pinned(KERNEL_CPU), timeout=seconds * 10 + 60)
    return float(re.search(r"median_mbs=([\d.]+)", run.stdout).group(1))


def with_remote_memory(binary: Path, provider: str, mib: int, seconds: float, block: int) -> tuple[float, float]:
    """The kernel's bandwidth while a client on the guest CPU reads ``block``-byte blocks."""
    server, control = serve(["faas_runtime.remote_memory", "--size", str(block + (1 << 20))], provider,
                            preexec_fn=pinned(GUEST_CPU))
    client = None
    try:
        client = subprocess.Popen([sys.executable, "-c", CLIENT, control, provider, str(block), str(seconds + 1.0)],
                                  env=fabric_env(provider), preexec_fn=pinned(GUEST_CPU), stdout=subprocess.PIPE,
                                  text=True)
        if client.stdout.readline().strip() != "reading":
            raise RuntimeError("remote-memory client failed")
        time.sleep(0.2)
        kbw = kernel(binary, mib, seconds)
        out = client.stdout.read()
        client.wait(60)
        return kbw, float(re.search(r"mbs=([\d.]+)", out).group(1))
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        server.terminate()
        server.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="tcp,shm")
    ap.add_argument("--seconds", type=float, default=5.0, help="kernel time per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256, help="MiB per STREAM array (3 arrays)")
    ap.add_argument("--block-mib", type=int, default=10, help="remote-memory read size")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs (kernel on CPU 0, remote memory on CPU 1)")
        return 1
    binary = build_kernel()
    block = args.block_mib << 20
    print(f"STREAM triad, 3 x {args.mib} MiB, CPU {KERNEL_CPU}; remote memory server + client reading "
          f"{args.block_mib} MiB blocks on CPU {GUEST_CPU}; {args.rounds} rounds x {args.seconds:g} s per phase; "
          f"load {os.getloadavg()[0]:.2f}")
    for provider in args.providers.split(","):
        alone, loaded, client = [], [], []
        for _ in range(args.rounds):
            alone.append(kernel(binary, args.mib, args.seconds))
            k, c = with_remote_memory(binary, provider, args.mib, args.seconds, block)
            loaded.append(k)
            client.append(c)
        a, w = statistics.median(alone), statistics.median(loaded)
        print(f"\nprovider {provider}")
        print(f"  kernel alone                   {a:10.0f} MB/s   (rounds: {', '.join(f'{x:.0f}' for x in alone)})")
        print(f"  kernel + remote-memory reads   {w:10.0f} MB/s   (rounds: {', '.join(f'{x:.0f}' for x in loaded)})")
        print(f"  slowdown                       {100 * (a - w) / a:10.1f} %      (paper, MILC: 0.2-7.4 %)")
        print(f"  client read bandwidth          {statistics.median(client):10.0f} MB/s   "
              f"(rounds: {', '.join(f'{x:.0f}' for x in client)})")
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
