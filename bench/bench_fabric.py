"""RMA data path vs its baselines, all measured in this run on this machine.

    .venv/bin/python bench/bench_fabric.py [--providers tcp,shm] [--iters 3000]

Baselines: bench/fabric_raw.c (raw C libfabric, compiled here) and a raw pyzmq
DEALER/ROUTER round trip. Load: print ``uptime`` first; other work on the machine moves
every figure (compare ratios from one run only). Printed: medians, ratios and the targets
each ratio is held to. The hot invocation has two rows: a Python handler
(``faas_runtime.rma.testing:echo``) and a native C function (``tests/functions/native_fns.c``:
``echo``, compiled here, answered by the C completion loop with no Python on the executor
side).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faas_runtime.fabric import FabricConfig  # noqa: E402
from faas_runtime.remote_memory import RemoteMemory  # noqa: E402
from faas_runtime.rma import RmaClient  # noqa: E402


def build_raw() -> Path:
    out = ROOT / "build" / "fabric_raw"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["cc", "-O2", "-o", str(out), str(ROOT / "bench" / "fabric_raw.c"), "-lfabric"], check=True)
    return out


def build_native() -> Path:
    """tests/functions/native_fns.c as a shared object; returns its directory (the code dir)."""
    out = ROOT / "build" / "native"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-I", str(ROOT / "csrc"), "-o", str(out / "libnative_fns.so"),
                    str(ROOT / "tests" / "functions" / "native_fns.c")], check=True)
    return out


def raw(binary: Path, provider: str, mode: str, size: int, iters: int) -> float:
    run = subprocess.run([str(binary), provider, "lo", mode, str(size), str(iters)], capture_output=True,
                         text=True, timeout=600, check=True)
    return float(re.search(r"median_us=([\d.]+)", run.stdout).group(1))


def median_us(fn, iters: int) -> float:
    for _ in range(max(iters // 10, 5)):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


ZMQ_ECHO = """
import sys, zmq
r = zmq.Context().socket(zmq.ROUTER); port = r.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    f = r.recv_multipart()
    if f[1] == b"stop": break
    r.send_multipart(f)
"""


def zmq_roundtrip(iters: int) -> float:
    """Raw pyzmq DEALER/ROUTER echo between two processes (the ZeroMQ hot path's floor)."""
    p = subprocess.Popen([sys.executable, "-c", ZMQ_ECHO], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    msg = b"x" * 64

    def once():
        dealer.send(msg)
        dealer.recv()

    try:
        return median_us(once, iters)
    finally:
        dealer.send(b"stop")
        p.wait(10)
        dealer.close(0)


def fabric_env(provider: str) -> dict[str, str]:
    """The environment of a benchmark process that uses ``provider`` (tcp on loopback)."""
    return dict(os.environ, FAAS_FABRIC=provider, FAAS_FABRIC_DOMAIN="lo" if provider == "tcp" else "",
                PYTHONPATH=str(ROOT))


def serve(argv: list[str], provider: str, preexec_fn=None, timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """Start ``python -m argv`` (an RMA executor or a memory server) on ``provider`` and
    wait for the control endpoint it writes to its ready file."""
    ready = Path(tempfile.mktemp(prefix="faas-bench-"))
    p = subprocess.Popen([sys.executable, "-m", *argv, "--ready-file", str(ready)], env=fabric_env(provider),
                         stderr=subprocess.DEVNULL, preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise RuntimeError(f"{argv[0]} did not start")
        time.sleep(0.02)
    control = ready.read_text()
    ready.unlink()
    return p, control


def line(what: str, value: float, base: float, base_name: str, target: str) -> None:
    print(f"  {what:<42} {value:10.2f} us   {base_name} {base:10.2f} us   ratio {value / base:6.2f}   target {target}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="tcp,shm")
    ap.add_argument("--iters", type=int, default=3000)
    args = ap.parse_args()
    binary = build_raw()
    native_dir = build_native()
    print(f"load {os.getloadavg()[0]:.2f}")
    zmq_us = zmq_roundtrip(args.iters)
    print(f"raw pyzmq DEALER/ROUTER round trip, 64 B, tcp: {zmq_us:.2f} us (median)")
    for provider in args.providers.split(","):
        cfg = FabricConfig(provider, "lo" if provider == "tcp" else "")
        print(f"\nprovider {provider}")
        raw64 = raw(binary, provider, "pingpong", 64, args.iters)
        for label, argv in (("RMA hot invocation 64 B (Python echo)",
                             ["--entrypoint", "faas_runtime.rma.testing:echo"]),
                            ("RMA hot invocation 64 B (native C echo)",
                             ["--entrypoint", "libnative_fns.so:echo", "--code", str(native_dir)])):
            p, control = serve(["faas_runtime.rma", *argv], provider)
            try:
                with RmaClient(control, cfg) as c:
                    payload = b"x" * 64
                    assert bytes(c.invoke(payload)) == payload
                    hot = median_us(lambda: c.invoke(payload), args.iters)
            finally:
                p.terminate()
                p.wait()
            line(label, hot, raw64, "raw C", "<= 2x raw")
            print(f"  {'':<42} vs ZeroMQ round trip: {zmq_us / hot:.1f}x faster (target >= 5x)")

        raw1m = raw(binary, provider, "write", 1 << 20, 300)
        mib = bytearray(os.urandom(1 << 20))
        for label, slot in (("inline (2 MiB slots)", (2 << 20) + 64), ("bulk (fi_read by executor)", 65536)):
            for fn, argv in (("Python", ["--entrypoint", "faas_runtime.rma.testing:sink"]),
                             ("native", ["--entrypoint", "libnative_fns.so:sink", "--code", str(native_dir)])):
                p, control = serve(["faas_runtime.rma", *argv, "--slot-size", str(slot), "--slots", "2"], provider)
                try:
                    with RmaClient(control, cfg) as c:
                        us = median_us(lambda: c.invoke(mib), 300)
                finally:
                    p.terminate()
                    p.wait()
                print(f"  1 MiB payload, {label + ', ' + fn:<27} {us:10.2f} us   raw C {raw1m:10.2f} us   "
                      f"bandwidth ratio {raw1m / us:5.2f}   target >= 0.8")

        raw10 = raw(binary, provider, "read", 10 << 20, 100)
        for label, options in (("back-off", []), ("always spin", ["--nap-us", "0"])):
            p, control = serve(["faas_runtime.remote_memory", "--size", "16M", *options], provider)
            try:
                with RemoteMemory(control, cfg) as rm:
                    buf = rm.buffer(10 << 20)
                    us = median_us(lambda: rm.read_into(0, buf), 100)
                    buf.close()
            finally:
                p.terminate()
                p.wait()
            print(f"  remote-memory read 10 MiB, server {label:<12} {us:9.2f} us   raw C {raw10:10.2f} us   "
                  f"bandwidth ratio {raw10 / us:5.2f}   target >= 0.8")


if __name__ == "__main__":
    main()
