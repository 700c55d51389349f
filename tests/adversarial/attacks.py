"""Attack code, run as an unprivileged user against the dev cluster's co-scheduler.

    python3 -m tests.adversarial.attacks NAME '{"param": ...}'

Each attack prints one JSON document with what it observed (the reply codes it got, what
it could read); the tests in this directory run it with ``runuser`` as a real user and
assert that every attempt failed with a typed error. Nothing here trusts the project's
client code: frames are built by hand, as an attacker would.
"""
from __future__ import annotations

import json
import os
import sys
import time

import msgpack
import zmq

from faas_runtime import munge
from faas_runtime import protocol as P

ENDPOINT = os.environ["FAAS_COSCHEDULER"]
MUNGE = os.environ["FAAS_MUNGE_SOCKET"]
CTX = zmq.Context.instance()


def dealer(identity: bytes | None = None) -> zmq.Socket:
    sock = CTX.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(ENDPOINT)
    return sock


def ask(sock: zmq.Socket, msg: dict, sign: bool = False, timeout_ms: int = 5000):
    """Send ``msg`` (with a real munge credential of this user if ``sign``); the reply or None."""
    msg = {"v": P.VERSION, **msg}
    if sign:
        msg["cred"] = munge.encode(P.body_digest(msg).encode(), MUNGE)
    sock.send(msgpack.packb(msg, use_bin_type=True))
    if not sock.poll(timeout_ms):
        return None
    return msgpack.unpackb(sock.recv_multipart()[0], raw=False)


def code(reply) -> str:
    if reply is None:
        return "no-reply"
    return reply.get("code") or reply["type"]


def pose_as_agent(node: str, job_id: int, victim: int, lease_id: str) -> dict:
    """Every agent message, as a user: HELLO unsigned, HELLO signed by this user, then
    the rest without a session, from a socket that even claims the old agent identity."""
    out = {}
    sock = dealer(identity=f"agent:{node}".encode())
    out["hello-unsigned"] = code(ask(sock, {"type": P.HELLO, "node": node, "held": [], "nonce": "x"}))
    out["hello-as-user"] = code(ask(sock, {"type": P.HELLO, "node": node, "held": [], "nonce": "x"}, sign=True))
    record = {"version": 1, "state": "lent", "job_id": 999_999, "node": node, "uid": os.getuid(),
              "slurm_cpus": [0, 1], "os_cpus": [0, 1], "mem_mb": 1000, "end_time": 0}
    for kind, fields in [
        (P.LEND, {"record": record}),
        (P.REVOKE, {"job_id": job_id, "reason": "forged"}),
        (P.HEARTBEAT, {"running": []}),
        (P.STARTED, {"invocation_id": victim, "attempt": 1}),
        (P.RESULT, {"invocation_id": victim, "attempt": 1, "outcome": "ok", "value_json": '"forged"'}),
        (P.RESULT, {"invocation_id": victim, "outcome": "ok", "value_json": '"forged"'}),  # no attempt
        (P.EVICTED, {"invocation_id": victim, "attempt": 1, "reason": "forged"}),
        (P.LEASE_READY, {"lease_id": lease_id, "endpoint": "tcp://127.0.0.1:1"}),
    ]:
        key = kind if kind not in out else f"{kind}-no-attempt"
        out[key] = code(ask(sock, {"type": kind, "node": node, **fields}))
    return out


def choose_group() -> dict:
    sock = dealer()
    fn = {"name": "grp", "entrypoint": "runtime_probe:whoami", "code_dir": os.environ["FAAS_TEST_CODE"]}
    return {str(gid): code(ask(sock, {"type": P.REGISTER, "function": {**fn, "gid": gid}}, sign=True))
            for gid in (0, -1, os.getgid())}


def bad_fields() -> dict:
    """Numbers without bounds and paths root could be made to look at."""
    sock = dealer()
    code_dir = os.environ["FAAS_TEST_CODE"]
    good = {"name": "bounded", "entrypoint": "probe:where", "code_dir": code_dir}
    out = {}
    for label, change in [("timeout 1e300", {"timeout_s": 1e300}), ("timeout nan", {"timeout_s": float("nan")}),
                          ("mem 1e12", {"mem_mb": 10**12}), ("cores 1e6", {"cores": 10**6}),
                          ("attempts 2**64-1", {"max_attempts": 2**64 - 1}), ("code /root", {"code_dir": "/root"}),
                          ("code relative", {"code_dir": "fns"}), ("code dotdot", {"code_dir": "/tmp/../root"}),
                          ("entry /etc/passwd:x", {"entrypoint": "/etc/passwd:x"}),
                          ("entry ../x.so:f", {"entrypoint": "../lib.so:f"}),
                          ("entry stdlib", {"entrypoint": "stat:S_ISDIR"}),
                          ("image relative", {"image": "img.sqfs", "runtime": "charliecloud"}),
                          ("runtime bogus", {"runtime": "docker"})]:
        out[label] = code(ask(sock, {"type": P.REGISTER, "function": {**good, **change}}, sign=True))
    out["register-good"] = code(ask(sock, {"type": P.REGISTER, "function": good}, sign=True))
    for label, msg in [("status id 2**63", {"type": P.STATUS, "invocation_id": 2**63}),
                       ("status id -1", {"type": P.STATUS, "invocation_id": -1}),
                       ("list limit 2**64-1", {"type": P.LIST, "limit": 2**64 - 1}),
                       ("list ids 2**63", {"type": P.LIST, "ids": [2**63]}),
                       ("invoke priority 2**63", {"type": P.INVOKE, "function": "bounded", "payload_json": "1",
                                                 "priority": 2**63}),
                       ("batch 1,000,000", {"type": P.INVOKE_BATCH, "function": "bounded",
                                            "check_count": 1_000_000}),
                       ("lease duration 1e300", {"type": P.LEASE, "function": "bounded", "duration_s": 1e300})]:
        out[label] = code(ask(sock, msg, sign=True))
    return out


def big_frame(mib: int) -> dict:
    """A frame larger than the co-scheduler takes: ZeroMQ drops the connection unread."""
    sock = dealer()
    sock.send(b"\x00" * (mib << 20))
    answered = sock.poll(2000)
    fresh = dealer()
    return {"answered": bool(answered), "ping-after": code(ask(fresh, {"type": P.PING, "rid": "p"}))}


def frames(parts: int) -> dict:
    """A message of the wrong shape (more frames than [identity, message])."""
    sock = dealer()
    frame = msgpack.packb({"v": P.VERSION, "type": P.PING, "rid": "shape"})
    sock.send_multipart([b"\x00\x11\x22\x33\x44"] * (parts - 1) + [frame])
    answered = sock.poll(1500)
    return {"answered": bool(answered), "ping-after": code(ask(sock, {"type": P.PING, "rid": "p"}))}


def bogus_credentials(n: int) -> dict:
    """``n`` requests with credentials munged refuses, as fast as they go out, while a
    second connection pings; every one must get a typed reply."""
    flood, pinger = dealer(), dealer()
    bogus = munge.encode(b"not the digest", MUNGE)[:-8] + "AAAAAAA="  # a damaged real credential
    for i in range(n):
        flood.send(msgpack.packb({"v": P.VERSION, "type": P.LIST, "rid": i, "cred": bogus}))
    pings, codes = [], {}
    got = 0
    deadline = time.monotonic() + 120
    next_ping = 0.0
    while got < n and time.monotonic() < deadline:
        if time.monotonic() >= next_ping:
            t0 = time.perf_counter()
            reply = ask(pinger, {"type": P.PING, "rid": "p"}, timeout_ms=10_000)
            pings.append((time.perf_counter() - t0, code(reply)))
            next_ping = time.monotonic() + 0.01
        while flood.poll(0):
            reply = msgpack.unpackb(flood.recv(), raw=False)
            codes[code(reply)] = codes.get(code(reply), 0) + 1
            got += 1
        time.sleep(0.001)
    return {"codes": codes, "pings": [c for _, c in pings], "ping_s": [t for t, _ in pings]}


def read_paths(paths: list[str]) -> dict:
    out = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            out[path] = "read"
        except OSError as exc:
            out[path] = exc.__class__.__name__
    return out


def main() -> None:
    name, params = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(globals()[name](**params)))


if __name__ == "__main__":
    main()
