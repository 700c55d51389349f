"""Hot invocations: lease a warm executor through the co-scheduler, then call it directly.

    from faas_runtime.client import lease

    with lease("square", endpoint="tcp://head:7800", duration_s=120) as fn:
        fn.call({"n": 3})                       # sync, returns the function's value
        pending = [fn.submit({"n": n}) for n in range(10)]   # async: send now ...
        values = [p.result(timeout_s=5) for p in pending]    # ... collect later

The lease request is munge-authenticated (the co-scheduler knows who asks); the calls then
go straight to the executor over ZeroMQ (DEALER -> the executor's ROUTER) with the lease's
token, without the co-scheduler on the path. Errors are typed:

  LeaseUnavailable  no capacity, unknown function, or the executor could not start
  LeaseEnded        the lease is over: released, expired, or revoked because the batch job
                    took its cores back (``reason`` says which); in-flight calls get it too
  CallTimeout       no reply within the call's timeout (the lease may still be alive)
  FunctionError     the function raised; ``remote_traceback`` has its traceback
"""
from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Optional

import zmq

from . import protocol as P


class LeaseError(Exception):
    """Base of the hot-path errors."""


class LeaseUnavailable(LeaseError):
    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class LeaseEnded(LeaseError):
    def __init__(self, reason: str):
        super().__init__(f"the lease ended: {reason}")
        self.reason = reason


LeaseRevoked = LeaseEnded  # the name the issue uses for the revoke case


class CallTimeout(LeaseError, TimeoutError):
    pass


class FunctionError(Exception):
    def __init__(self, message: str, remote_traceback: Optional[str] = None):
        super().__init__(message)
        self.remote_traceback = remote_traceback


class PendingCall:
    """An asynchronous call: ``result()`` waits for (and returns) its value."""

    def __init__(self, lease: "HotLease", rid: str):
        self._lease, self.rid = lease, rid

    def done(self) -> bool:
        self._lease._pump(0)
        return self.rid in self._lease._replies

    def result(self, timeout_s: Optional[float] = None) -> Any:
        return json.loads(self._lease._wait(self.rid, timeout_s))


class HotLease:
    """A leased executor. Not thread-safe (one socket); use one lease per thread."""

    def __init__(self, control, lease_id: str, endpoint: str, token: str, cpus: list[int],
                 call_timeout_s: float = 60.0, slot_id: Optional[str] = None):
        self._control = control
        self.slot_id = slot_id  # "<job>@<node>": whose lent cores this lease holds
        self.lease_id, self.endpoint, self.token, self.cpus = lease_id, endpoint, token, cpus
        self.call_timeout_s = call_timeout_s
        self.ended: Optional[str] = None
        self._rids = itertools.count(1)
        self._prefix = f"{os.getpid()}-"
        self._replies: dict[str, dict] = {}
        self._outstanding: set[str] = set()
        self._ctx = zmq.Context.instance()
        self._sock = P.configure(self._ctx.socket(zmq.DEALER))
        self._sock.connect(endpoint)

    # -- calls ----------------------------------------------------------------------------

    def call(self, payload: Any = None, timeout_s: Optional[float] = None) -> Any:
        return json.loads(self.call_json(json.dumps(payload), timeout_s))

    def call_json(self, payload_json: str, timeout_s: Optional[float] = None) -> str:
        """One call with the payload as JSON text; returns the value as JSON text."""
        return self._wait(self._send(payload_json), timeout_s)

    def submit(self, payload: Any = None) -> PendingCall:
        return PendingCall(self, self._send(json.dumps(payload)))

    def _send(self, payload_json: str) -> str:
        if self.ended is not None:
            raise LeaseEnded(self.ended)
        rid = f"{self._prefix}{next(self._rids)}"
        self._sock.send(P.encode(P.CALL, rid=rid, token=self.token, payload_json=payload_json), copy=False)
        self._outstanding.add(rid)
        return rid

    def _wait(self, rid: str, timeout_s: Optional[float]) -> str:
        deadline = time.monotonic() + (self.call_timeout_s if timeout_s is None else timeout_s)
        while rid not in self._replies:
            if self.ended is not None:
                self._outstanding.discard(rid)
                raise LeaseEnded(self.ended)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"no reply from the executor at {self.endpoint} in time")
            self._pump(remaining)
        self._outstanding.discard(rid)
        reply = self._replies.pop(rid)
        if reply["type"] == P.ERROR:
            if reply.get("code") in (P.E_LEASE, P.E_EVICTED):
                self.ended = self.ended or reply.get("message", "ended")
                raise LeaseEnded(self.ended)
            raise LeaseError(f"{reply.get('code')}: {reply.get('message')}")
        if reply.get("outcome") != "ok":
            raise FunctionError(reply.get("error") or "the function failed", reply.get("traceback"))
        return reply["value_json"]

    def _pump(self, timeout_s: float) -> None:
        """Receive what arrived (waiting up to ``timeout_s`` for the first message)."""
        if not self._sock.poll(max(0, int(timeout_s * 1000))):
            return
        while True:
            try:
                frame = self._sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = P.decode(frame)
            except P.ProtocolError:
                continue
            if msg["type"] == P.LEASE_ENDED:
                self.ended = str(msg.get("reason", "ended"))
            elif msg.get("rid") in self._outstanding:
                self._replies[msg["rid"]] = msg

    # -- lifetime -------------------------------------------------------------------------

    def release(self) -> None:
        """End the lease (idempotent); the executor returns to the agent's warm pool."""
        if self.ended is None:
            self.ended = "released by the client"
            try:
                if self._control is not None:
                    self._control.request(P.LEASE_RELEASE, lease_id=self.lease_id)
            except Exception:
                pass  # the lease expires on its own
        self._sock.close()
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> "HotLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease(function: str, *, endpoint: Optional[str] = None, munge_socket: Optional[str] = None,
          duration_s: float = 300.0, timeout_s: float = 60.0, call_timeout_s: float = 60.0) -> HotLease:
    """Lease an executor of ``function`` (one of yours) for ``duration_s``; wait until it is ready."""
    from coscheduler.client import Client, RequestError

    endpoint = endpoint or os.environ.get("FAAS_COSCHEDULER", "tcp://127.0.0.1:7800")
    munge_socket = munge_socket or os.environ.get("FAAS_MUNGE_SOCKET")
    control = Client(endpoint, munge_socket, timeout_s=min(timeout_s, 30.0))
    try:
        try:
            lease_id = control.request(P.LEASE, function=function, duration_s=duration_s)["lease_id"]
        except RequestError as exc:
            raise LeaseUnavailable(str(exc), exc.code) from None
        deadline = time.monotonic() + timeout_s
        poll = 0.01
        while True:
            st = control.request(P.LEASE_STATUS, lease_id=lease_id)
            if st["state"] == "ready":
                return HotLease(control, lease_id, st["endpoint"], st["token"], st.get("cpus") or [], call_timeout_s,
                                st.get("slot_id"))
            if st["state"] in ("failed", "ended"):
                raise LeaseUnavailable(f"lease {lease_id} {st['state']}: {st.get('reason')}")
            if time.monotonic() > deadline:
                try:
                    control.request(P.LEASE_RELEASE, lease_id=lease_id)
                finally:
                    raise LeaseUnavailable(f"lease {lease_id} not ready after {timeout_s:g} s")
            time.sleep(poll)
            poll = min(poll * 1.5, 0.2)
    except BaseException:
        control.close()
        raise
