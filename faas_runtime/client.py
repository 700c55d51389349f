"""Hot invocations: lease a warm executor through the co-scheduler, then call it directly.

    from faas_runtime.client import lease

    with lease("square", endpoint="tcp://head:7800", duration_s=120) as fn:
        fn.call({"n": 3})                       # sync, returns the function's value
        pending = [fn.submit({"n": n}) for n in range(10)]   # async: send now ...
        values = [p.result(timeout_s=5) for p in pending]    # ... collect later

The lease request is munge-authenticated (the co-scheduler knows who asks); the calls then
go straight to the executor over ZeroMQ (DEALER -> the executor's ROUTER) with the lease's
token, without the co-scheduler on the path.

RMA (docs/fabric.md): when fabric is enabled by configuration (``FAAS_FABRIC`` = tcp, shm,
...; ``fabric=`` overrides; ``off`` = ZeroMQ alone) the lease asks for it, and if the
grant carries the executor's RMA control endpoint the lease attaches there with its token
(``faas_runtime.rma.RmaClient``) and makes its calls over one-sided RMA; ``transport``
says which path it uses ("rma" or "zmq"). Nothing else changes: same calls, same values,
same errors. When the node cannot serve RMA or the attach fails, the lease stays on ZeroMQ
without a word (debug log). ``submit`` (asynchronous) always goes over ZeroMQ; ``call``
and ``call_json`` go over RMA when attached.

Errors are typed:

  LeaseUnavailable  no capacity, unknown function, or the executor could not start
  LeaseEnded        the lease is over: released, expired, or revoked because the batch job
                    took its cores back (``reason`` says which); in-flight calls get it too
  CallTimeout       no reply within the call's timeout, and the co-scheduler does not say the
                    lease ended (it may still be alive)
  FunctionError     the function raised; ``remote_traceback`` has its traceback
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Any, Optional

import zmq

from . import protocol as P
from .fabric import FabricConfig

log = logging.getLogger("faas.client")


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

    def __init__(self, lease: "HotLease", rid: str, value_json: Optional[str] = None,
                 error: Optional[BaseException] = None):
        self._lease, self.rid = lease, rid
        self._value_json, self._error = value_json, error  # a call already made (RMA)

    def done(self) -> bool:
        if self._value_json is not None or self._error is not None:
            return True
        self._lease._pump(0)
        return self.rid in self._lease._replies

    def result(self, timeout_s: Optional[float] = None) -> Any:
        if self._error is not None:
            raise self._error
        if self._value_json is not None:
            return json.loads(self._value_json)
        return _value(self._lease._wait_reply(self.rid, timeout_s))


ZERO_COPY_BYTES = 64 * 1024  # frames this large are sent without a copy (below: zero-copy costs more)


class HotLease:
    """A leased executor. Not thread-safe (one socket); use one lease per thread."""

    def __init__(self, control, lease_id: str, endpoint: str, token: str, cpus: list[int],
                 call_timeout_s: float = 60.0, slot_id: Optional[str] = None, rma: Optional[dict] = None,
                 fabric: Optional[FabricConfig] = None):
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
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self.rma = rma  # what the grant offered: {control, provider}, or None
        self._rma = None  # faas_runtime.rma.RmaClient once attached
        self.rma_error: Optional[str] = None  # why RMA is not used, when it was offered
        if rma and fabric is not None and fabric.enabled:
            self._attach_rma(rma, fabric)

    @property
    def transport(self) -> str:
        return "rma" if self._rma is not None else "zmq"

    def _attach_rma(self, rma: dict, fabric: FabricConfig) -> None:
        try:
            from .rma import RmaClient

            from .rma import ExecutorLost, RemoteFunctionError, RmaLeaseEnded

            self._rma_errors = (ExecutorLost, RemoteFunctionError, RmaLeaseEnded)
            self._rma = RmaClient(str(rma["control"]), route_fabric(fabric, str(rma["control"])),
                                  timeout=min(self.call_timeout_s, 30.0), attach={"token": self.token})
        except Exception as exc:  # no binding, no provider, refused: ZeroMQ, quietly
            self.rma_error = f"{type(exc).__name__}: {exc}"
            log.debug("lease %s: RMA attach to %s failed, calls use ZeroMQ: %s", self.lease_id, rma, exc)
            return
        # Be known to the executor's hot socket, so that LEASE_ENDED reaches this lease.
        self._sock.send(P.encode(P.PING, rid=f"{self._prefix}rma", token=self.token), copy=False)

    def _drop_rma(self) -> None:
        rma, self._rma = self._rma, None
        if rma is not None:
            rma.timeout = min(rma.timeout, 1.0)  # a dead executor must not hold release() up
            try:
                rma.close()
            except Exception:
                pass

    # -- calls ----------------------------------------------------------------------------

    def call(self, payload: Any = None, timeout_s: Optional[float] = None) -> Any:
        """One call: a JSON value in, its value out; bytes (bytes, bytearray, memoryview)
        go as a binary call (``call_bytes``)."""
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return self.call_bytes(payload, timeout_s)
        return json.loads(self.call_json(json.dumps(payload), timeout_s))

    def call_bytes(self, data: Any, timeout_s: Optional[float] = None) -> Any:
        """One binary call: the function gets the bytes; returns the bytes it returned (or
        its JSON value, decoded, if it returned something else)."""
        if self._rma is not None:
            out = self._rma_call(P.RMA_BINARY + data, timeout_s)
            return out[1:] if out[:1] == P.RMA_BINARY else json.loads(out)
        return _value(self._wait_reply(self._send(None, data), timeout_s))

    def call_parts(self, parts: list, timeout_s: Optional[float] = None) -> Any:
        """``call_bytes`` of the parts' concatenation (``pyapi.encode_call_parts``): over RMA
        large parts are read where they lie (``faas_runtime.rma.gather``), and a large
        result comes back as a memoryview valid until this lease's next call, or as the
        list of its segments (``pyapi.decode_result`` takes both; decode before the next
        call)."""
        if self._rma is not None:
            body = P.RMA_BINARY + parts[0] if len(parts) == 1 else [P.RMA_BINARY, *parts]  # small: one C call
            out = self._rma_call(body, timeout_s, view=True)
            segments = out if type(out) is list else [out]
            if segments[0][:1] != P.RMA_BINARY:
                return json.loads(b"".join(segments))
            return [segments[0][1:], *segments[1:]] if type(out) is list else out[1:]
        return _value(self._wait_reply(self._send(None, b"".join(parts)), timeout_s))

    def call_json(self, payload_json: str, timeout_s: Optional[float] = None) -> str:
        """One call with the payload as JSON text; returns the value as JSON text."""
        if self._rma is not None:
            return self._rma_call(payload_json.encode(), timeout_s).decode()
        return self._wait_reply(self._send(payload_json), timeout_s)["value_json"]

    def submit(self, payload: Any = None) -> PendingCall:
        # Asynchronous calls stay on ZeroMQ (RMA calls are synchronous); the executor runs
        # them one at a time with the RMA ones.
        return PendingCall(self, self._send(json.dumps(payload)))

    def _rma_check(self) -> None:
        """Between slices of an RMA wait: did the executor say LEASE_ENDED?"""
        self._pump(0)
        if self.ended is not None:
            raise LeaseEnded(self.ended)

    def _rma_call(self, body: Any, timeout_s: Optional[float], view: bool = False) -> Any:
        ExecutorLost, RemoteFunctionError, RmaLeaseEnded = self._rma_errors  # imported by the attach
        if self.ended is not None:
            raise LeaseEnded(self.ended)
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        try:
            out = self._rma.invoke(body, timeout=timeout, check=self._rma_check, view=view)
        except RemoteFunctionError as exc:
            text = str(exc)
            try:
                doc = json.loads(text)
                raise FunctionError(doc["error"], doc.get("traceback")) from None
            except (ValueError, TypeError, KeyError):
                raise FunctionError(text) from None
        except LeaseEnded:
            self._drop_rma()
            raise
        except RmaLeaseEnded as exc:
            self.ended = self.ended or exc.reason
            self._drop_rma()
            raise LeaseEnded(self.ended) from None
        except ExecutorLost as exc:
            self._drop_rma()  # a late reply could land in the result buffer: later calls use ZeroMQ
            if exc.code == 110:
                self._pump(0)
                if self.ended is not None:
                    raise LeaseEnded(self.ended) from None
                raise CallTimeout(f"no reply from the executor at {self.endpoint} (RMA) in time") from None
            self._pump(1.0)  # the executor says LEASE_ENDED before it goes
            self.ended = self.ended or f"the executor was lost: {exc}"
            raise LeaseEnded(self.ended) from None
        return out

    def _send(self, payload_json: Optional[str], data: Any = None) -> str:
        """Send one CALL: JSON text, or ``data`` (bytes-like) as a binary payload."""
        if self.ended is not None:
            raise LeaseEnded(self.ended)
        rid = f"{self._prefix}{next(self._rids)}"
        body = {"payload_json": payload_json} if data is None else {
            P.PAYLOAD_BIN: data if type(data) is bytes else bytes(data)}
        frame = P.encode(P.CALL, rid=rid, token=self.token, **body)
        self._sock.send(frame, copy=len(frame) < ZERO_COPY_BYTES)  # zero-copy only pays for large frames
        self._outstanding.add(rid)
        return rid

    def _wait_reply(self, rid: str, timeout_s: Optional[float]) -> dict:
        """The RESULT of call ``rid`` that succeeded (else the typed error)."""
        deadline = time.monotonic() + (self.call_timeout_s if timeout_s is None else timeout_s)
        while rid not in self._replies:
            if self.ended is not None:
                self._outstanding.discard(rid)
                raise LeaseEnded(self.ended)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._ask_if_ended()
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
        return reply

    def _ask_if_ended(self) -> None:
        """No reply in time: an executor that ended before this client first called it (the
        memory guard's SIGKILL follows its LEASE_END by 0.5 s) told nobody here. The
        co-scheduler knows: LeaseEnded with its reason, else the caller's CallTimeout."""
        if self._control is None:
            return
        try:
            st = self._control.request(P.LEASE_STATUS, lease_id=self.lease_id)
        except Exception:
            return  # the co-scheduler cannot say: a plain timeout
        if st.get("state") in ("ended", "failed"):
            self.ended = self.ended or str(st.get("reason") or st["state"])
            self._outstanding.clear()
            raise LeaseEnded(self.ended)

    def _pump(self, timeout_s: float) -> None:
        """Receive what arrived (waiting up to ``timeout_s`` for the first message)."""
        if not self._poller.poll(max(0, int(timeout_s * 1000))):  # one Poller: Socket.poll makes one a call
            return
        self._take()

    def _take(self) -> None:
        """Receive every message waiting."""
        while True:
            try:
                frame = self._sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            more = self._sock.get(zmq.EVENTS) & zmq.POLLIN  # asked, not raised: zmq.Again costs per call
            try:
                msg = P.decode(frame)
            except P.ProtocolError:
                continue
            if msg["type"] == P.LEASE_ENDED:
                self.ended = str(msg.get("reason", "ended"))
            elif msg.get("rid") in self._outstanding:
                self._replies[msg["rid"]] = msg
            if not more:
                return

    # -- lifetime -------------------------------------------------------------------------

    def release(self) -> None:
        """End the lease (idempotent); the executor returns to the agent's warm pool."""
        self._drop_rma()
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


def route_fabric(fabric: FabricConfig, towards: str) -> FabricConfig:
    """The client's side of ``addresses.agent_addresses``: with no domain configured, an IP
    provider's endpoint opens on the interface this host reaches ``towards`` (the executor's
    RMA control endpoint) through, where the executor can reach it back, not on the
    provider's first interface (which may be ``lo``)."""
    from dataclasses import replace

    from .addresses import IP_PROVIDERS, AddressError, address_towards, interface_of

    if fabric.domain or fabric.provider.split(";")[0].strip().lower() not in IP_PROVIDERS:
        return fabric
    try:
        iface = interface_of(address_towards(towards))
    except (AddressError, OSError):
        return fabric
    return replace(fabric, domain=iface) if iface else fabric


def _value(reply: dict) -> Any:
    """A successful RESULT's value: bytes (binary) or the decoded JSON value."""
    data = reply.get(P.VALUE_BIN)
    return data if isinstance(data, bytes) else json.loads(reply["value_json"])


def lease(function: str, *, endpoint: Optional[str] = None, munge_socket: Optional[str] = None,
          duration_s: float = 300.0, timeout_s: float = 60.0, call_timeout_s: float = 60.0,
          fabric: Optional[FabricConfig] = None) -> HotLease:
    """Lease an executor of ``function`` (one of yours) for ``duration_s``; wait until it is ready.

    ``fabric``: the RMA configuration (default ``FabricConfig.from_env()``, i.e. FAAS_FABRIC);
    disabled (``off``) keeps the calls on ZeroMQ."""
    from .queue_client import Client, user_address  # the user-side queue client, same layer

    endpoint, munge_socket = user_address(endpoint, munge_socket)
    fabric = FabricConfig.from_env() if fabric is None else fabric
    ask = {"fabric": {"provider": fabric.provider, "domain": fabric.domain}} if fabric.enabled else {}
    control = Client(endpoint, munge_socket, timeout_s=min(timeout_s, 30.0))
    try:
        st = request_lease(control, {"function": function, "duration_s": duration_s, **ask}, timeout_s)
        return HotLease(control, st["lease_id"], st["endpoint"], st["token"], st.get("cpus") or [], call_timeout_s,
                        st.get("slot_id"), rma=st.get("rma"), fabric=fabric)
    except BaseException:
        control.close()
        raise


def request_lease(control, fields: dict, timeout_s: float) -> dict:
    """Ask the co-scheduler for a lease (LEASE with ``fields``: a function's, or a memory
    lease's, slurm_faas/memory.py) and wait up to ``timeout_s`` until it is ready: its
    LEASE_STATUS (lease_id, endpoint, token, cpus, slot_id, rma). LeaseUnavailable when it
    is refused, fails, or is not ready in time (then it is released)."""
    from .queue_client import RequestError

    try:
        lease_id = control.request(P.LEASE, **fields)["lease_id"]
    except RequestError as exc:
        raise LeaseUnavailable(str(exc), exc.code) from None
    deadline = time.monotonic() + timeout_s
    poll = 0.01
    while True:
        st = control.request(P.LEASE_STATUS, lease_id=lease_id)
        if st["state"] == "ready":
            return {**st, "lease_id": lease_id}
        if st["state"] in ("failed", "ended"):
            raise LeaseUnavailable(f"lease {lease_id} {st['state']}: {st.get('reason')}")
        if time.monotonic() > deadline:
            try:
                control.request(P.LEASE_RELEASE, lease_id=lease_id)
            finally:
                raise LeaseUnavailable(f"lease {lease_id} not ready after {timeout_s:g} s")
        time.sleep(poll)
        poll = min(poll * 1.5, 0.2)
