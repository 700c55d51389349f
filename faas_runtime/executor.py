"""The warm executor: imports one function once, then runs calls until it is stopped.

The agent starts one executor per (function, slot), inside the function's container,
inside its own cgroup (cpuset = the lent CPUs), as the function owner
(``faas_runtime.confinement``), and keeps it warm between invocations until the
keep-warm timeout. Two ZeroMQ ROUTER sockets:

  control  ``ipc://<run dir>/control.sock``: the agent only (the run dir is the owner's,
           mode 0700). CALL (an invocation from the queue), GRANT / LEASE_END (hot leases).
  hot      ``tcp://<host>:<free port>``: clients holding a lease (``faas_runtime.client``)
           call the function directly; every CALL carries the lease token the agent
           granted. The endpoint is written to ``<run dir>/endpoint`` once bound.

Each CALL sets the CPU affinity to the CPUs of that invocation (a subset of the cgroup's
cpuset) before the function runs. Replies are RESULT messages (``outcome`` ok/error).

SIGTERM (eviction): a call in progress is interrupted, its caller gets an ``evicted``
error, hot clients get LEASE_ENDED, and the process exits; the agent SIGKILLs the
cgroup after its grace. Runs with the image's interpreter and only the standard
library plus faas_runtime, zmq and msgpack (bound into the image by the agent).

    python3 -m faas_runtime.executor --entrypoint mod:func --code DIR --run-dir DIR \\
        [--hot-host 127.0.0.1]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any, Optional

import zmq

from . import protocol as P


class Evicted(BaseException):
    """Raised into a running call by SIGTERM: the executor is being stopped."""


def load_callable(entrypoint: str, code_dir: str):
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entrypoint must be 'module:function', got {entrypoint!r}")
    sys.path.insert(0, code_dir)
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entrypoint} is not callable")
    return obj


class Executor:
    def __init__(self, entrypoint: str, code_dir: str, run_dir: str, hot_host: str):
        self.run_dir = run_dir
        self.stopping = False
        self.in_call = False
        self.tokens: dict[str, list[int]] = {}  # lease token -> its CPUs
        self.hot_peers: dict[bytes, str] = {}  # client identity -> the token it used
        self.load_error: Optional[str] = None
        try:
            self.fn = load_callable(entrypoint, code_dir)
        except BaseException as exc:  # reported on every call: the agent turns it into FAILED
            self.fn = None
            self.load_error = f"cannot load {entrypoint}: {type(exc).__name__}: {exc}"
        self.ctx = zmq.Context(io_threads=1)
        self.control = P.configure(self.ctx.socket(zmq.ROUTER))
        self.control.bind(f"ipc://{run_dir}/control.sock")
        self.hot = P.configure(self.ctx.socket(zmq.ROUTER))
        self.hot.bind(f"tcp://{hot_host}:0")
        endpoint = self.hot.getsockopt_string(zmq.LAST_ENDPOINT)
        tmp = os.path.join(run_dir, ".endpoint")
        with open(tmp, "w") as fh:
            fh.write(endpoint)
        os.replace(tmp, os.path.join(run_dir, "endpoint"))

    def on_sigterm(self, _signum, _frame) -> None:
        self.stopping = True
        if self.in_call:
            raise Evicted()

    # -- one call -------------------------------------------------------------------------

    def call(self, payload_json: str, cpus: Optional[list[int]]) -> dict[str, Any]:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if self.fn is None:
            return {"outcome": "error", "error": self.load_error}
        self.in_call = True
        try:
            value = self.fn(json.loads(payload_json))
            value_json = json.dumps(value)
        except Evicted:
            raise
        except BaseException as exc:  # the function's failure is a result, not a crash
            return {"outcome": "error", "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=20), "cpus": sorted(os.sched_getaffinity(0))}
        finally:
            self.in_call = False
        return {"outcome": "ok", "value_json": value_json, "cpus": sorted(os.sched_getaffinity(0))}

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.hot, zmq.POLLIN)
        while not self.stopping:
            try:
                ready = dict(poller.poll(timeout=500))
            except zmq.ZMQError:
                continue  # EINTR from a signal
            if self.control in ready:
                self._drain(self.control, trusted=True)
            if self.hot in ready and not self.stopping:
                self._drain(self.hot, trusted=False)
        self._lease_ended_all("the executor was stopped (the lend was revoked or the executor retired)")
        self.control.close()
        self.hot.close()
        self.ctx.term()

    def _drain(self, sock: zmq.Socket, trusted: bool) -> None:
        while not self.stopping:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity, frame = frames[0], frames[-1]
            rid = None
            try:
                msg = P.decode(frame)
                rid = msg.get("rid")
                self._handle(sock, identity, msg, trusted)
            except P.ProtocolError as exc:
                self._reply(sock, identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
            except Evicted:
                self._reply(sock, identity, P.ERROR, rid=rid, code=P.E_EVICTED,
                            message="the executor was stopped during the call (lend revoked)")
                self.stopping = True
                return
            except Exception as exc:  # never die on one bad request
                self._reply(sock, identity, P.ERROR, rid=rid, code=P.E_INTERNAL, message=str(exc))

    def _reply(self, sock: zmq.Socket, identity: bytes, msg_type: str, **fields: Any) -> None:
        try:
            sock.send_multipart([identity, P.encode(msg_type, **fields)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone or not reading: its own timeout covers it

    def _handle(self, sock: zmq.Socket, identity: bytes, msg: dict, trusted: bool) -> None:
        kind = msg["type"]
        if kind == P.CALL:
            cpus = msg.get("cpus")
            if not trusted:
                token = msg.get("token")
                if token not in self.tokens:
                    raise P.ProtocolError(P.E_LEASE, "no valid lease for this executor (ended or never granted)")
                self.hot_peers[identity] = token
                cpus = self.tokens[token]
            payload = msg.get("payload_json", "null")
            if not isinstance(payload, str):
                raise P.ProtocolError(P.E_MALFORMED, "payload_json must be JSON text")
            result = self.call(payload, cpus)
            self._reply(sock, identity, P.RESULT, rid=msg.get("rid"), **result)
        elif kind == P.GRANT and trusted:
            self.tokens[msg["token"]] = list(msg.get("cpus") or sorted(os.sched_getaffinity(0)))
            self._reply(sock, identity, P.OK, rid=msg.get("rid"))
        elif kind == P.LEASE_END and trusted:
            token = msg.get("token")
            self.tokens.pop(token, None)
            for peer, t in list(self.hot_peers.items()):
                if t == token:
                    self._reply(self.hot, peer, P.LEASE_ENDED, reason=msg.get("reason", "lease ended"))
                    del self.hot_peers[peer]
            self._reply(sock, identity, P.OK, rid=msg.get("rid"))
        elif kind == P.PING:
            self._reply(sock, identity, P.OK, rid=msg.get("rid"), pong=True)
        else:
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"an executor does not take {kind!r}")

    def _lease_ended_all(self, reason: str) -> None:
        for peer in self.hot_peers:
            self._reply(self.hot, peer, P.LEASE_ENDED, reason=reason)
        self.hot_peers.clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-executor")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--code", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--hot-host", default="127.0.0.1", help="address hot clients reach this node at")
    args = ap.parse_args(argv)
    ex = Executor(args.entrypoint, args.code, args.run_dir, args.hot_host)
    signal.signal(signal.SIGTERM, ex.on_sigterm)
    signal.signal(signal.SIGINT, ex.on_sigterm)
    ex.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
