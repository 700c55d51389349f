"""Hot invocation round trip, beside a raw pyzmq DEALER/ROUTER round trip, in one run.

    .venv/bin/python bench/bench_hot.py [--n 2000] [--runtime none|charliecloud --image DIR]
        [--fabric tcp,shm]   # RMA hot path rows per provider ("off": none)

The hot path is the production one: a warm executor started by a real faas-agent (in its
cgroup on the lent CPU, as it runs on a node) and the faas_runtime.client HotLease calling
it directly with a lease token: msgpack framing, JSON payload, the function `echo`.
The baseline is a raw pyzmq DEALER -> ROUTER echo (a separate process, blocking
recv/send), same payload sizes, same transport (TCP loopback). Median and p99 of N round
trips each, after a warm-up; prints the ratio (target: hot <= 1.5x raw at 64 B).
The RMA hot path (libfabric, docs/fabric.md) is the same HotLease API on a lease whose grant carries the
executor's RMA endpoint (one per provider, same agent, same run); its ratio is printed
against the ZeroMQ hot call (target: >= 5x faster at 64 B) and against the raw C
libfabric round trip of the same size on the same provider (bench/fabric_raw.c).
Each hot path has two rows: the Python function ``runtime_probe:echo`` and the native C
function ``libnative_fns.so:echo`` (tests/functions/native_fns.c, compiled here; on RMA
leases the executor's C completion loop answers it with no Python per call).
No assertions: numbers to read.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq  # noqa: E402

SIZES = {"64 B": 64, "1 MiB": 1 << 20}
NATIVE = "libnative_fns.so:echo"


def _raw_server(port_q: mp.Queue, cpus=None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # where the executor runs (its I/O thread too)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_q.put(port)
    while True:
        parts = sock.recv_multipart(copy=False)
        if parts[-1].bytes == b"quit":
            break
        sock.send_multipart(parts, copy=False)
    ctx.destroy(linger=0)


def raw_round_trips(size: int, n: int, warmup: int, server_cpus=None) -> list[float]:
    """``server_cpus``: pin the echo server there (the executor's lent CPUs)."""
    q: mp.Queue = mp.Queue()
    server = mp.Process(target=_raw_server, args=(q, server_cpus), daemon=True)
    server.start()
    port = q.get(timeout=10)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    payload = b"x" * size
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        sock.send(payload, copy=size < 65536)
        sock.recv(copy=size < 65536)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sock.send(b"quit")
    server.join(5)
    ctx.destroy(linger=0)
    return times


def hot_round_trips(lease, size: int, n: int, warmup: int) -> list[float]:
    payload_json = json.dumps("x" * (size - 2))  # JSON text of exactly `size` bytes
    assert len(payload_json) == size
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        out = lease.call_json(payload_json, timeout_s=30)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert out == payload_json
    return times


def _fmt(ts: list[float]) -> tuple[float, float]:
    ts = sorted(ts)
    return statistics.median(ts) * 1e6, ts[min(len(ts) - 1, int(0.99 * len(ts)))] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="round trips per size (1 MiB: n/10)")
    ap.add_argument("--runtime", default="none", choices=["none", "charliecloud"])
    ap.add_argument("--image", default=None, help="image directory for --runtime charliecloud")
    ap.add_argument("--fabric", default="tcp,shm", help="providers for the RMA rows, comma-separated, or off")
    args = ap.parse_args()
    from faas_runtime.fabric import FabricConfig

    from _local_agent import LocalAgent
    from bench_fabric import build_native, build_raw, raw

    raw_c = build_raw()
    native_dir = build_native()

    def leased(slot, entrypoint, **kw):
        # the compiled native functions live in a code dir of their own
        return la.lease(slot, entrypoint, code_dir=native_dir if entrypoint == NATIVE else None, **kw)

    la = LocalAgent()
    try:
        cpus = sorted(os.sched_getaffinity(0))
        slot = la.lend(1, [cpus[-1]])
        kw = dict(image=args.image, runtime=args.runtime if args.image else None)
        leases = {"python": leased(slot, "runtime_probe:echo", **kw), "native": leased(slot, NATIVE, **kw)}
        lease = leases["python"]
        print(f"hot executor: runtime {args.runtime}, cgroups {'on' if la.agent.subtree else 'off'}, "
              f"endpoint {lease.endpoint}, CPUs {lease.cpus}")
        providers = [p for p in args.fabric.split(",") if p and p != "off"]

        def rma_lease(provider, entrypoint):
            # one at a time: an attached RMA executor busy-polls its (here: the only lent) CPU
            got = leased(slot, entrypoint, fabric=FabricConfig(provider, "lo" if provider == "tcp" else ""), **kw)
            if got.transport != "rma":
                print(f"RMA {provider}: not available ({got.rma_error or 'the executor offered no RMA'}), row skipped")
                got.release()
                return None
            return got
        print(f"{'payload':<8} {'path':<26} {'median us':>10} {'p99 us':>10} {'n':>6}")
        for label, size in SIZES.items():
            n = args.n if size < 65536 else max(50, args.n // 10)
            raw_zmq = _fmt(raw_round_trips(size, n, warmup=n // 10))
            print(f"{label:<8} {'raw pyzmq':<26} {raw_zmq[0]:>10.1f} {raw_zmq[1]:>10.1f} {n:>6}")
            hot = {}
            for fn, fl in leases.items():
                hot[fn] = _fmt(hot_round_trips(fl, size, n, warmup=n // 10))
                print(f"{label:<8} {'hot call zmq ' + fn:<26} {hot[fn][0]:>10.1f} {hot[fn][1]:>10.1f} {n:>6}"
                      f"   hot/raw pyzmq: median {hot[fn][0] / raw_zmq[0]:.2f}x"
                      + ("   (target <= 1.5x)" if size == 64 else ""))
            for provider in providers:
                base = raw(raw_c, provider, "pingpong", size, max(n, 200))
                print(f"{label:<8} {'raw C libfabric ' + provider:<26} {base:>10.1f} {'':>10} {max(n, 200):>6}")
                for fn, entrypoint in (("python", "runtime_probe:echo"), ("native", NATIVE)):
                    rl = rma_lease(provider, entrypoint)
                    if rl is None:
                        continue
                    try:
                        r = _fmt(hot_round_trips(rl, size, n, warmup=n // 10))
                    finally:
                        rl.release()
                        for _ in range(20):
                            la.step(5)
                    print(f"{label:<8} {f'hot call rma {provider} {fn}':<26} {r[0]:>10.1f} {r[1]:>10.1f} {n:>6}"
                          f"   zmq/rma: {hot[fn][0] / r[0]:.1f}x" + (" (target >= 5x)" if size == 64 else "")
                          + f"   rma/raw C: {r[0] / base:.2f}x")
        for fl in leases.values():
            fl.release()
    finally:
        la.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
