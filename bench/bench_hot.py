"""Hot invocation round trip, beside a raw pyzmq DEALER/ROUTER round trip, in one run.

    .venv/bin/python bench/bench_hot.py [--n 2000] [--runtime none|charliecloud --image DIR]

The hot path is the production one: a warm executor started by a real faas-agent (in its
cgroup on the lent CPU, as it runs on a node) and the faas_runtime.client HotLease calling
it directly with a lease token: msgpack framing, JSON payload, the function `echo`.
The baseline is a raw pyzmq DEALER -> ROUTER echo (a separate process, blocking
recv/send), same payload sizes, same transport (TCP loopback). Median and p99 of N round
trips each, after a warm-up; prints the ratio (target: hot <= 1.5x raw at 64 B).
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


def _raw_server(port_q: mp.Queue) -> None:
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


def raw_round_trips(size: int, n: int, warmup: int) -> list[float]:
    q: mp.Queue = mp.Queue()
    server = mp.Process(target=_raw_server, args=(q,), daemon=True)
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
    args = ap.parse_args()

    from _local_agent import LocalAgent

    la = LocalAgent()
    try:
        cpus = sorted(os.sched_getaffinity(0))
        slot = la.lend(1, [cpus[-1]])
        lease = la.lease(slot, "runtime_probe:echo", image=args.image, runtime=args.runtime if args.image else None)
        print(f"hot executor: runtime {args.runtime}, cgroups {'on' if la.agent.subtree else 'off'}, "
              f"endpoint {lease.endpoint}, CPUs {lease.cpus}")
        print(f"{'payload':<8} {'path':<10} {'median us':>10} {'p99 us':>10} {'n':>6}")
        for label, size in SIZES.items():
            n = args.n if size < 65536 else max(50, args.n // 10)
            raw = _fmt(raw_round_trips(size, n, warmup=n // 10))
            hot = _fmt(hot_round_trips(lease, size, n, warmup=n // 10))
            print(f"{label:<8} {'raw pyzmq':<10} {raw[0]:>10.1f} {raw[1]:>10.1f} {n:>6}")
            print(f"{label:<8} {'hot call':<10} {hot[0]:>10.1f} {hot[1]:>10.1f} {n:>6}")
            print(f"{label:<8} ratio hot/raw: median {hot[0] / raw[0]:.2f}x, p99 {hot[1] / raw[1]:.2f}x"
                  + ("   (target <= 1.5x)" if size == 64 else ""))
        lease.release()
    finally:
        la.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
