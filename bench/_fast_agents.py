"""Stand-in agents for the queue benchmarks: they speak the agent protocol over real
ZeroMQ and answer every RUN with STARTED + RESULT at once (no executor process), so a
run measures the co-scheduler, its database and the protocol.

``legacy=True`` speaks the protocol of the last release before agents authenticated (a
chosen ZeroMQ identity, a HELLO without a credential, one frame per message, no ACK):
bench_trust.py runs that release's co-scheduler as the unauthenticated baseline.
"""
from __future__ import annotations

import os
import time

import msgpack
import zmq


def _encode(msg_type: str, **fields) -> bytes:
    return msgpack.packb({"v": 1, "type": msg_type, **fields}, use_bin_type=True)


def hello_frame(node: str, munge_socket: str | None) -> bytes:
    """An agent's HELLO holding nothing, with a munge credential of this process's uid."""
    from faas_runtime import munge
    from faas_runtime import protocol as P

    body = {"v": P.VERSION, "type": P.HELLO, "node": node, "held": [], "nonce": os.urandom(8).hex()}
    cred = munge.encode(P.body_digest(body).encode(), munge_socket)
    return P.encode(P.HELLO, node=node, held=[], nonce=body["nonce"], cred=cred)


def run_fast_agents(endpoint: str, slots: list[tuple[str, int]], cores: int, stop_file: str,
                    munge_socket: str | None = None, legacy: bool = False) -> None:
    ctx = zmq.Context()
    socks: dict[zmq.Socket, tuple[str, int]] = {}
    poller = zmq.Poller()

    def hello(sock: zmq.Socket, node: str) -> None:
        sock.send(_encode("hello", node=node, running=[]) if legacy else hello_frame(node, munge_socket))

    for node, job_id in slots:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if legacy:
            sock.setsockopt(zmq.IDENTITY, f"agent:{node}".encode())
        sock.connect(endpoint)
        hello(sock, node)
        socks[sock] = (node, job_id)
        poller.register(sock, zmq.POLLIN)
    next_beat = time.monotonic() + 1
    while not os.path.exists(stop_file):
        for sock, _ in poller.poll(100):
            node, job_id = socks[sock]
            while True:
                try:
                    msg = msgpack.unpackb(sock.recv_multipart(zmq.NOBLOCK)[0], raw=False)
                except zmq.Again:
                    break
                kind = msg["type"]
                if kind == "welcome":
                    sock.send(_encode("lend", node=node, record={
                        "version": 1, "state": "lent", "job_id": job_id, "node": node, "uid": 0, "gid": 0,
                        "slurm_cpus": list(range(cores)), "os_cpus": [0] * cores, "mem_mb": 64000,
                        "end_time": 0, "until_min": 0}))
                elif kind == "error" and msg.get("code") == "unknown-agent":
                    hello(sock, node)
                elif kind in ("run", "runs"):
                    runs = msg["runs"] if kind == "runs" else [msg]
                    if legacy:
                        for run in runs:
                            ids = {"invocation_id": run["invocation_id"], "attempt": run["attempt"]}
                            sock.send(_encode("started", node=node, **ids))
                            sock.send(_encode("result", node=node, **ids, outcome="ok", value_json="null",
                                              cpus=run["os_cpus"]))
                        continue
                    reports = []
                    for run in runs:
                        ids = {"invocation_id": run["invocation_id"], "attempt": run["attempt"]}
                        reports += [{"type": "started", **ids},
                                    {"type": "result", **ids, "outcome": "ok", "value_json": "null",
                                     "cpus": run["os_cpus"]}]
                    sock.send(_encode("reports", node=node, reports=reports))
        if time.monotonic() >= next_beat:
            for sock, (node, _) in socks.items():
                sock.send(_encode("heartbeat", node=node, running=[]))
            next_beat = time.monotonic() + 1
    for sock in socks:
        sock.close()
    ctx.term()
