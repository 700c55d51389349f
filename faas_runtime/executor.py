"""The warm executor: imports one function once, then runs calls until it is stopped.

The agent starts one executor per (function, slot), inside the function's container,
inside its own cgroup (cpuset = the lent CPUs), as the function owner
(``faas_runtime.confinement``), and keeps it warm between invocations until the
keep-warm timeout. Two ZeroMQ ROUTER sockets:

  control  a DEALER connected to the socket the agent bound for this executor (``--control``,
           in a directory of root's; the socket file is the owner's alone). The first
           message is OK ``rid=ready`` with the hot endpoint; then CALL (an invocation from
           the queue) or CALLS (several, sent ahead: run in order, one RESULT each; a CANCEL
           with their ``rids`` drops those not begun), GRANT / LEASE_END (hot leases). Nothing
           the agent needs is left in files: the agent runs as root and never reads a path
           the function can replace.
  hot      ``tcp://<host>:<free port>``: clients holding a lease (``faas_runtime.client``)
           call the function directly; every CALL carries the lease token the agent
           granted.

Each CALL sets the CPU affinity to the CPUs of that invocation (a subset of the cgroup's
cpuset) before the function runs. Replies are RESULT messages (``outcome`` ok/error).

RMA (``faas_runtime.rma``, docs/fabric.md): a GRANT that names a libfabric provider
(``fabric``: {provider, domain}; the agent sends it when its FAAS_FABRIC is not off) makes
this process open an ``RmaExecutor`` for the same function (JSON bytes in, JSON bytes
out) with its ZeroMQ control socket at ``tcp://<hot host>:<free port>``; the OK reply
carries ``rma`` = {control, provider}, which the agent puts into LEASE_READY. FABRIC_ATTACH
must carry a granted token. The RMA loop busy-polls in a thread of this process (so in
this cgroup, as this uid) only while a lease is attached; calls over either path run one
at a time. LEASE_END and SIGTERM end the token's RMA slots too (later requests get the
"ended" flag) and hot clients, RMA ones included (they PING the hot socket with their
token), get LEASE_ENDED. If libfabric or the provider is missing, the reply has no
``rma`` and clients stay on ZeroMQ.

Native functions (docs/functions.md, ``csrc/faas_native.h``): an entrypoint
``path/libfn.so:symbol`` (the library inside the code dir) is loaded with dlopen instead
of imported. Over ZeroMQ (CALL) the executor calls it through the binding (cffi; ctypes
where the binding is absent, e.g. in a container without cffi) with the payload's JSON
text and takes its output as the value's JSON text (checked: not JSON is an error). On
an RMA lease the C completion loop calls it straight on the request ring, with no Python
per call. Its failures (a non-zero return, a result larger than its room, not JSON) are
``NativeFunctionError: <entrypoint> returned <code>: <message>`` results, like a raising
Python function; a library or symbol that cannot be loaded fails every call with the
reason, like a module that cannot be imported.

SIGTERM (eviction): a call in progress is interrupted, its caller gets an ``evicted``
error, hot clients get LEASE_ENDED, and the process exits; the agent SIGKILLs the
cgroup after its grace. Runs with the image's interpreter and only the standard
library plus faas_runtime, zmq and msgpack (bound into the image by the agent).

    python3 -m faas_runtime.executor --entrypoint mod:func --code DIR --run-dir DIR \\
        --control ipc:///var/lib/slurm-faas/agent/NODE/ctl/NAME/control.sock [--hot-host 127.0.0.1]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import logging
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Optional

import zmq

from . import protocol as P
from .output_capture import OutputCapture
from .executor_rma import RmaServing
from .executor_values import NotJSON, bounded_traceback, call_payload, keep_freed_memory, value_out
from .native import NativeFunction, NativeFunctionError, NATIVE_NOT_JSON, is_native_entrypoint, json_valid

log = logging.getLogger("faas.executor")


class Evicted(BaseException):
    """Raised into a running call by SIGTERM: the executor is being stopped."""


def load_callable(entrypoint: str, code_dir: Optional[str] = None):
    """The callable ``module:function`` names, with ``code_dir`` first on sys.path (None:
    sys.path as it is)."""
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entrypoint must be 'module:function', got {entrypoint!r}")
    if code_dir is not None:
        sys.path.insert(0, code_dir)
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entrypoint} is not callable")
    return obj


class Executor(RmaServing):
    def __init__(self, entrypoint: str, code_dir: str, run_dir: str, hot_host: str, control: str):
        self.run_dir = run_dir
        self.stopping = False
        self.in_call = False
        self.tokens: dict[str, list[int]] = {}  # lease token -> its CPUs
        self.hot_peers: dict[bytes, str] = {}  # client identity -> the token it used
        # Tokens whose lease ended -> why (the latest few): a hot client whose first message
        # arrives after the LEASE_END (the hot socket is read after the control socket)
        # still hears LEASE_ENDED with the reason.
        self.ended_tokens: dict[str, str] = {}
        self.load_error: Optional[str] = None
        self.hot_host = hot_host
        self.fn_lock = threading.Lock()  # one call at a time, ZeroMQ or RMA
        self.rma: dict[str, Any] = {}  # provider -> RmaExecutor (opened on the first GRANT that asks)
        self.rma_failed: dict[str, str] = {}  # provider -> why it could not open
        self.rma_threads: dict[str, threading.Thread] = {}
        self._rma_cpus: Optional[list[int]] = None  # the RMA thread's affinity
        self._pinned_to: Optional[list[int]] = None  # the CPU list this thread was last pinned to
        self._pinned_cpus: list[int] = []  # and the affinity that gave
        self.native: Optional[NativeFunction] = None  # a C function (path/lib.so:symbol)
        self.output = OutputCapture()  # a queued invocation's stdout and stderr
        self.inbox: deque = deque()  # the agent's messages read and not handled yet, in order
        try:
            if is_native_entrypoint(entrypoint):
                self.native = NativeFunction(entrypoint, code_dir)
                self.fn = self.native
            else:
                self.fn = load_callable(entrypoint, code_dir)
        except BaseException as exc:  # reported on every call: the agent turns it into FAILED
            self.fn = None
            self.load_error = f"cannot load {entrypoint}: {type(exc).__name__}: {exc}"
        self.ctx = zmq.Context(io_threads=1)
        self.hot = P.configure(self.ctx.socket(zmq.ROUTER))
        self.hot.bind(f"tcp://{hot_host}:0")
        self.control = P.configure(self.ctx.socket(zmq.DEALER))
        self.control.connect(control)
        self._reply(self.control, None, P.OK, rid=P.READY_RID, endpoint=self.hot.getsockopt_string(zmq.LAST_ENDPOINT))

    def on_sigterm(self, _signum, _frame) -> None:
        self.stopping = True
        if self.in_call:
            raise Evicted()

    # -- one call -------------------------------------------------------------------------

    def call(self, payload: Any, cpus: Optional[list[int]], capture: bool = False,
             binary: bool = False) -> dict[str, Any]:
        """Run the function once on JSON text, or on bytes (``binary``: the function gets
        the bytes, and may return bytes). ``capture``: its stdout and stderr go with the
        result (``output``; queued invocations, not hot calls)."""
        if cpus and cpus is not self._pinned_to:  # a lease's CPUs (the same list each call): once
            os.sched_setaffinity(0, cpus)
            self._pinned_to, self._pinned_cpus = cpus, sorted(os.sched_getaffinity(0))
        if self.fn is None:
            return {"outcome": "error", "error": self.load_error}
        if capture:
            self.output.start()
        self.in_call = True  # before the lock: SIGTERM interrupts a wait for an RMA call too
        try:
            with self.fn_lock:
                if self.native is not None:
                    value = ({P.VALUE_BIN: self.native(payload)} if binary  # raw bytes both ways
                             else {"value_json": self._native_json(payload.encode())})
                else:
                    value = value_out(self.fn(payload if binary else json.loads(payload)), binary)
            result: dict[str, Any] = {"outcome": "ok", **value}
        except Evicted:
            raise
        except NotJSON as exc:  # the function returned; its value cannot be sent
            result = {"outcome": "error", "error": str(exc), "traceback": None}
        except NativeFunctionError as exc:  # no Python traceback: the function is C
            result = {"outcome": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": None}
        except BaseException as exc:  # the function's failure is a result, not a crash
            result = {"outcome": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": bounded_traceback(traceback.format_exc(limit=20))}
        finally:
            self.in_call = False
            if capture:
                output = self.output.stop()
        if capture:
            result["output"] = output
        result["cpus"] = self._pinned_cpus if cpus and cpus is self._pinned_to else sorted(os.sched_getaffinity(0))
        return result

    def _native_json(self, payload: bytes) -> str:
        """The native function on JSON text: its output, checked to be JSON text."""
        out = self.native(payload)
        if not json_valid(out):
            raise self.native.error(NATIVE_NOT_JSON, b"", len(out))
        return out.decode("utf-8")

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        poller, polled = None, None
        while not self.stopping:
            # The RMA control sockets are this thread's while their serving thread is not running.
            idle_rma = {p: r for p, r in self.rma.items() if not self._rma_running(p)}
            if poller is None or polled != idle_rma.keys():  # built again only when that changes:
                poller, polled = zmq.Poller(), set(idle_rma)  # not per hot call
                poller.register(self.control, zmq.POLLIN)
                poller.register(self.hot, zmq.POLLIN)
                for r in idle_rma.values():
                    poller.register(r.sock, zmq.POLLIN)
            try:
                ready = dict(poller.poll(timeout=100 if self.rma else 500))
            except zmq.ZMQError:
                continue  # EINTR from a signal
            if self.control in ready or self.inbox:
                self._drain_control()
            if self.hot in ready and not self.stopping:
                self._drain(self.hot, trusted=False)
            for provider, r in idle_rma.items():
                if r.sock in ready and not self.stopping:
                    self._rma_control(provider, r)
        if self.tokens:
            self._take_lease_ends()
        reason = "the executor was stopped (the lend was revoked or the executor retired)"
        for token in list(self.tokens):
            self._rma_end(token, reason)
        self._lease_ended_all(reason)
        self.control.close()
        self.hot.close(linger=500 if self.rma else 0)  # LEASE_ENDED must leave before os._exit below
        self.ctx.term()
        if any(self._rma_running(p) for p in self.rma):
            # An RMA call may still run in its thread: the clients were told; do not wait for it.
            for r in self.rma.values():
                r.stop()
            sys.stdout.flush()
            os._exit(0)
        for r in self.rma.values():
            r.close()

    def _drain_control(self) -> None:
        """The agent's messages, in order. What waits on the socket is read before each one
        is handled, so a CANCEL reaches a CALL sent ahead before that CALL begins."""
        while not self.stopping:
            self._take_control()
            if not self.inbox:
                return
            msg = self.inbox.popleft()
            self._serve_one(self.control, None, msg, trusted=True)

    def _take_control(self) -> None:
        """Every frame waiting on the control socket into the inbox (CALLS as its CALLs)."""
        while self.control.get(zmq.EVENTS) & zmq.POLLIN:  # asked, not raised: zmq.Again costs per call
            try:
                frame = self.control.recv_multipart(flags=zmq.NOBLOCK)[-1]  # the agent's DEALER: no routing frame
                msg = P.decode(frame)
            except zmq.Again:
                return
            except P.ProtocolError as exc:
                self._reply(self.control, None, P.ERROR, code=exc.code, message=str(exc))
                continue
            kind = msg["type"]
            if kind == P.CALLS and isinstance(msg.get("calls"), list):
                self.inbox.extend({**c, "type": P.CALL} for c in msg["calls"] if isinstance(c, dict))
            elif kind == P.CANCEL and isinstance(msg.get("rids"), list):
                rids = {r for r in msg["rids"] if isinstance(r, str)}
                self.inbox = deque(m for m in self.inbox if m["type"] != P.CALL or m.get("rid") not in rids)
            else:
                self.inbox.append(msg)

    def _drain(self, sock: zmq.Socket, trusted: bool) -> None:
        while not self.stopping:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) == 2:
                try:
                    msg = P.decode(frames[1])
                except P.ProtocolError as exc:
                    self._reply(sock, frames[0], P.ERROR, code=exc.code, message=str(exc))
                else:
                    self._serve_one(sock, frames[0], msg, trusted)
            if not sock.get(zmq.EVENTS) & zmq.POLLIN:  # asked, not raised: zmq.Again costs per call
                return

    def _serve_one(self, sock: zmq.Socket, identity: Optional[bytes], msg: dict, trusted: bool) -> None:
        rid = msg.get("rid")
        try:
            self._handle(sock, identity, msg, trusted)
        except P.ProtocolError as exc:
            self._reply(sock, identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
        except Evicted:
            self._reply(sock, identity, P.ERROR, rid=rid, code=P.E_EVICTED,
                        message="the executor was stopped during the call (lend revoked)")
            self.stopping = True
        except Exception as exc:  # never die on one bad request
            self._reply(sock, identity, P.ERROR, rid=rid, code=P.E_INTERNAL, message=str(exc))

    def _reply(self, sock: zmq.Socket, identity: Optional[bytes], msg_type: str, **fields: Any) -> None:
        frame = P.encode(msg_type, **fields)
        try:
            # copy=False: a large result is not copied again (small ones are, below pyzmq's copy_threshold)
            sock.send_multipart([frame] if identity is None else [identity, frame], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            pass  # the peer is gone or not reading: its own timeout covers it

    def _handle(self, sock: zmq.Socket, identity: bytes, msg: dict, trusted: bool) -> None:
        kind = msg["type"]
        if kind == P.CALL:
            cpus = msg.get("cpus")
            if not trusted:
                token = msg.get("token")
                if token not in self.tokens:
                    if isinstance(token, str) and token in self.ended_tokens:
                        raise P.ProtocolError(P.E_LEASE, self.ended_tokens[token])  # the reason
                    raise P.ProtocolError(P.E_LEASE, "no valid lease for this executor (ended or never granted)")
                self.hot_peers[identity] = token
                cpus = self.tokens[token]
            payload, binary = call_payload(msg)
            began = time.perf_counter()
            result = self.call(payload, cpus, capture=trusted, binary=binary)
            if trusted:  # its own run time: the agent cannot see when a CALL sent ahead began
                result["run_s"] = time.perf_counter() - began
            self._reply(sock, identity, P.RESULT, rid=msg.get("rid"), **result)
        elif kind == P.GRANT and trusted:
            self.tokens[msg["token"]] = list(msg.get("cpus") or sorted(os.sched_getaffinity(0)))
            self._rma_cpus = self.tokens[msg["token"]]
            rma = self._rma_open(msg.get("fabric"))
            self._reply(sock, identity, P.OK, rid=msg.get("rid"), **({"rma": rma} if rma else {}))
        elif kind == P.LEASE_END and trusted:
            token = msg.get("token")
            self.tokens.pop(token, None)
            if isinstance(token, str):
                self.ended_tokens[token] = str(msg.get("reason", "lease ended"))
                while len(self.ended_tokens) > 64:
                    self.ended_tokens.pop(next(iter(self.ended_tokens)))
            self._rma_end(token, str(msg.get("reason", "lease ended")))
            for peer, t in list(self.hot_peers.items()):
                if t == token:
                    self._reply(self.hot, peer, P.LEASE_ENDED, reason=msg.get("reason", "lease ended"))
                    del self.hot_peers[peer]
            self._reply(sock, identity, P.OK, rid=msg.get("rid"))
        elif kind == P.PING:
            token = msg.get("token")
            if not trusted and token in self.tokens:
                self.hot_peers[identity] = token  # an RMA client: it gets LEASE_ENDED here
            elif not trusted and isinstance(token, str) and token in self.ended_tokens:
                self._reply(sock, identity, P.LEASE_ENDED, reason=self.ended_tokens[token])  # ended before it came
            self._reply(sock, identity, P.OK, rid=msg.get("rid"), pong=True)
        else:
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"an executor does not take {kind!r}")

    def _take_lease_ends(self, wait_ms: int = 100) -> None:
        """Stopping with leases still granted: the agent may have sent their LEASE_END (with
        the real reason, e.g. the memory guard's shrink) just before its SIGTERM, which ended
        the loop before it read it. Take those, so their clients hear that reason."""
        for msg in [m for m in self.inbox if m["type"] == P.LEASE_END]:  # read, not yet handled
            self._handle(self.control, None, msg, trusted=True)
        for _ in range(64):
            try:
                if not self.tokens or not self.control.poll(wait_ms):
                    return
                msg = P.decode(self.control.recv_multipart(flags=zmq.NOBLOCK)[-1])
            except zmq.ZMQError:
                return
            except P.ProtocolError:
                continue
            if msg.get("type") == P.LEASE_END:
                self._handle(self.control, None, msg, trusted=True)

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
    ap.add_argument("--control", required=True, help="the agent's control socket (ipc://...) to connect to")
    args = ap.parse_args(argv)
    # Line by line, as a terminal would: a call's print() and its stderr keep their order.
    sys.stdout.reconfigure(line_buffering=True)
    keep_freed_memory()  # a call's large buffers reuse faulted-in memory, not fresh pages
    ex = Executor(args.entrypoint, args.code, args.run_dir, args.hot_host, args.control)
    signal.signal(signal.SIGTERM, ex.on_sigterm)
    signal.signal(signal.SIGINT, ex.on_sigterm)
    ex.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
