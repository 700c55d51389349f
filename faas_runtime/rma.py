"""Hot invocations over libfabric RMA: an executor's registered request ring and its client.

Set-up goes over ZeroMQ (the executor binds a ROUTER; ``fabric-attach`` trades
endpoint names, addresses and keys and leases one ring slot to the client); after
that every invocation is one-sided RMA:

1. the client writes ``header + payload`` into its slot of the executor's ring
   with ``fi_writedata``; the immediate data is ``slot << 16 | seq`` (fits the
   4 bytes that the smallest providers carry);
2. the executor, busy-polling its completion queue in C, sees the data, runs
   the function on a memoryview of the slot (no copy), and writes
   ``header + result`` into the client's registered result buffer with the
   same immediate data;
3. the client, busy-polling in C inside the same call that posted its write,
   returns the result.

Bulk: a payload larger than the slot is not copied: the client registers it
where it lies and sends only a header; the executor reads it with ``fi_read``.
A result larger than the client's result buffer stays registered at the
executor and the client reads it (released at the slot's next request).
Providers without remote CQ data signal with write + an 8-byte send (chosen
in C, see ``csrc/fabric.c``).

Header (32 bytes, little endian): length u64, bulk address u64, bulk key u64,
flags u32, seq u32. Flags: 1 = bulk (payload/result lies at address/key),
2 = error (the result is the error text, UTF-8), 4 = ended (with 2: the lease of this
slot ended; the text says why).

Native functions (``csrc/faas_native.h``): when the handler is a :class:`NativeHandler`
whose function the binding loaded, the executor's loop is ``ff_serve_native`` (C): it
calls the function straight on the ring slot, writes the result into the reply buffer and
posts it, with no Python per request. Python sees only what C does not handle: control
messages (between polls), bulk payloads, results larger than the client's buffer, a
function that failed (its code and message come back as an ``FF_EV_NATIVE`` event and
become the same error text the Python call gives), ended leases and errors.

Leases (the warm executor, ``faas_runtime.executor``): ``authorize(attach_msg)`` checks
each FABRIC_ATTACH (the lease token) and returns the lease's tag, or raises
``ProtocolError`` to refuse it; :meth:`RmaExecutor.end` (any thread) ends every slot of a
tag, and later requests in those slots are answered with the "ended" flag.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq

from faas_runtime import protocol
from faas_runtime.fabric import (Endpoint, FabricConfig, FabricError, MemoryRegion, NativeFunction,
                                 NativeFunctionError, NATIVE_NOT_JSON, NATIVE_TOO_SMALL, _check,
                                 is_native_entrypoint, json_valid, load)

log = logging.getLogger("faas.rma")

HEADER = struct.Struct("<QQQII")
HSIZE = HEADER.size  # 32
F_BULK = 1
F_ERROR = 2
F_ENDED = 4
DEFAULT_SLOT_SIZE = 64 * 1024
DEFAULT_SLOTS = 16
EV_NONE, EV_DATA, EV_TX_ERROR, EV_RX_ERROR, EV_NATIVE = 0, 1, 2, 3, 4
FF_INVOKE_MORE = -1000000  # csrc/fabric.h

Handler = Callable[[memoryview], Any]


class RemoteFunctionError(RuntimeError):
    """The function raised on the executor; the message is its error text."""


class ExecutorLost(FabricError):
    """The executor did not answer (killed, revoked or unreachable)."""


class RmaLeaseEnded(RuntimeError):
    """The executor ended this client's lease (released, expired or revoked)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AttachRefused(RuntimeError):
    """The executor refused FABRIC_ATTACH (e.g. no valid lease token); ``code`` is its error code."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


@dataclass
class _Slot:
    peer: int
    result_addr: int
    result_key: int
    result_size: int
    identity: bytes
    staged: Optional[MemoryRegion] = None  # a bulk result waiting for the client's read
    tag: Any = None  # what ``authorize`` returned (the lease token)
    ended: Optional[str] = None  # why the lease of this slot ended; requests get F_ENDED


class RmaExecutor:
    """Serves ``handler(payload: memoryview) -> bytes-like`` over RMA.

    ``serve()`` runs until :meth:`stop` (or SIGTERM in :func:`main`); it polls
    the fabric in C and the ZeroMQ control socket between bursts."""

    def __init__(self, handler: Handler, control: str, config: Optional[FabricConfig] = None,
                 slots: int = DEFAULT_SLOTS, slot_size: int = DEFAULT_SLOT_SIZE,
                 ctx: Optional[zmq.Context] = None, authorize: Optional[Callable[[dict], Any]] = None):
        if slot_size < HSIZE + 64 or slots < 1 or slots > 0xFFFF:
            raise ValueError("slot_size >= 96 bytes and 1 <= slots <= 65535")
        self.handler = handler
        self.ep = Endpoint(config or FabricConfig.from_env())
        self.ffi, self.lib = load()
        self.slots = slots
        self.slot_size = slot_size
        self.ring = self.ep.register(size=slots * slot_size)  # clients write requests here
        self.out = self.ep.register(size=slots * slot_size, remote=False)  # results staged here
        self.scratch: Optional[MemoryRegion] = None  # bulk payloads are read into this
        self._ring_view = self.ring.view
        self._out_view = self.out.view
        self._leases: dict[int, _Slot] = {}
        self._ctx = ctx or zmq.Context.instance()
        self.sock = protocol.configure(self._ctx.socket(zmq.ROUTER))
        if control.endswith(":0"):
            port = self.sock.bind_to_random_port(control[: control.rfind(":")])
            control = f"{control[: control.rfind(':')]}:{port}"
        else:
            self.sock.bind(control)
        self.control = control
        self._stop = False
        self.served = 0
        self.authorize = authorize
        self._ends: list[tuple[Any, str]] = []  # (tag, reason) from other threads; list ops are atomic
        # The C loop of a native function: the slot table it reads and a flag that sends it
        # back to Python (an end or a stop from another thread).
        native = getattr(handler, "native", None)
        self._native = native.handle if isinstance(native, NativeFunction) and native.handle is not None else None
        self._cslots = self.ffi.new("struct ff_slot[]", slots)
        self._attention = self.ffi.new("int *")
        self._cserved = self.ffi.new("uint64_t *")

    @property
    def native_fast_path(self) -> bool:
        """True when requests are answered by the C loop (a native function)."""
        return self._native is not None

    def _sync_slot(self, slot: int) -> None:
        """Mirror a lease into the C slot table (only this executor's serving thread calls it)."""
        c = self._cslots[slot]
        lease = self._leases.get(slot)
        if lease is None:
            c.fast = 0
            return
        c.peer, c.raddr, c.rkey, c.rsize = lease.peer, lease.result_addr, lease.result_key, lease.result_size
        c.fast = int(lease.ended is None and lease.staged is None and min(lease.result_size, self.slot_size) > HSIZE)

    # -- control channel ------------------------------------------------------
    def _control(self) -> None:
        protocol.answer_pending(self.sock, self._handle_control)

    def _handle_control(self, ident: bytes, msg: dict) -> bytes:
        rid = msg.get("rid")
        if msg["type"] == protocol.FABRIC_ATTACH:
            if msg.get("provider") != self.ep.provider:
                return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_INVALID,
                                       message=f"executor runs provider {self.ep.provider!r}, "
                                               f"client {msg.get('provider')!r}")
            tag = self.authorize(msg) if self.authorize is not None else None  # ProtocolError: refused
            free = next((i for i in range(self.slots) if i not in self._leases), None)
            if free is None:
                return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_NOT_READY,
                                       message=f"all {self.slots} request slots are leased")
            peer = self.ep.insert(msg["name"])
            res = msg["result"]
            self._leases[free] = _Slot(peer, res["addr"], res["key"], res["size"], ident, tag=tag)
            self._sync_slot(free)
            return protocol.encode(protocol.OK, rid=rid, name=self.ep.name, slot=free,
                                   slot_size=self.slot_size,
                                   ring={"addr": self.ring.base + free * self.slot_size, "key": self.ring.key})
        if msg["type"] == protocol.FABRIC_DETACH:
            self._release(int(msg.get("slot", -1)))
            return protocol.encode(protocol.OK, rid=rid)
        if msg["type"] == protocol.PING:
            return protocol.encode(protocol.OK, rid=rid, served=self.served, leases=len(self._leases))
        return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_UNKNOWN_TYPE,
                               message=f"unknown type {msg['type']!r}")

    def end(self, tag: Any, reason: str) -> None:
        """End every slot leased under ``tag`` (thread-safe; applied by the serving loop,
        or by the next :meth:`apply_ends` of the thread that owns this executor)."""
        self._ends.append((tag, reason))
        self._attention[0] = 1

    def apply_ends(self) -> None:
        self._attention[0] = 0  # before the pops: an end appended meanwhile raises it again
        while self._ends:
            tag, reason = self._ends.pop(0)
            for slot, lease in self._leases.items():
                if lease.tag == tag and lease.ended is None:
                    lease.ended = reason
                    self._sync_slot(slot)

    @property
    def leased(self) -> int:
        """Slots attached and not ended."""
        return sum(1 for lease in self._leases.values() if lease.ended is None)

    def _release(self, slot: int) -> None:
        lease = self._leases.pop(slot, None)
        if lease is None:
            return
        self._sync_slot(slot)
        if lease.staged is not None:
            lease.staged.close()
        self.ep.remove(lease.peer)

    # -- data path --------------------------------------------------------------
    def _run(self, slot: int, imm: int, native_failed: Optional[tuple[int, int]] = None
             ) -> Optional[tuple[int, int]]:
        """Handle the request in ``slot``; returns (offset, length) of the reply in ``out``.
        ``native_failed``: (code, out_len) of the native function the C loop already called
        on this request (its message lies in ``out``)."""
        lease = self._leases.get(slot)
        if lease is None:
            log.warning("request in unleased slot %d ignored", slot)
            return None
        try:
            return self._run_leased(slot, lease, native_failed)
        finally:
            self._sync_slot(slot)

    def _run_leased(self, slot: int, lease: _Slot, native_failed: Optional[tuple[int, int]]
                    ) -> Optional[tuple[int, int]]:
        if lease.staged is not None:  # the client read its previous bulk result
            lease.staged.close()
            lease.staged = None
        base = slot * self.slot_size
        length, baddr, bkey, flags, seq = HEADER.unpack_from(self._ring_view, base)
        if lease.ended is None and self._ends:
            self.apply_ends()
        try:
            if lease.ended is not None:
                raise _Ended(lease.ended)
            if flags & F_BULK:
                payload = self._read_bulk(lease, length, baddr, bkey)
            else:
                payload = self._ring_view[base + HSIZE: base + HSIZE + length]
            if native_failed is not None and native_failed[0] != NATIVE_TOO_SMALL:
                code, out_len = native_failed
                cap = min(lease.result_size, self.slot_size) - HSIZE
                message = bytes(self._out_view[base + HSIZE: base + HSIZE + min(out_len, cap)])
                raise self.handler.failed(code, message, out_len)
            result = self.handler(payload)  # (a native one that needs more room: called again here)
            if result is None:
                result = b""
            rflags = 0
        except FabricError:
            raise
        except _Ended as exc:
            result = str(exc).encode()
            rflags = F_ERROR | F_ENDED
        except HandlerError as exc:  # the handler's own error text
            result = exc.text.encode()
            rflags = F_ERROR
        except Exception as exc:  # the function's failure is a result
            result = f"{type(exc).__name__}: {exc}".encode()
            rflags = F_ERROR
        rview = memoryview(result).cast("B")
        rlen = rview.nbytes
        cap = min(lease.result_size, self.slot_size) - HSIZE
        if rlen <= cap:
            HEADER.pack_into(self._out_view, base, rlen, 0, 0, rflags, seq)
            self._out_view[base + HSIZE: base + HSIZE + rlen] = rview
            return base, HSIZE + rlen
        lease.staged = self.ep.register(result)  # no copy; the client reads it
        HEADER.pack_into(self._out_view, base, rlen, lease.staged.base, lease.staged.key, rflags | F_BULK, seq)
        return base, HSIZE

    def _read_bulk(self, lease: _Slot, length: int, addr: int, key: int) -> memoryview:
        if self.scratch is None or self.scratch.size < length:
            if self.scratch is not None:
                self.scratch.close()
            self.scratch = self.ep.register(size=max(length, 1), remote=False)
        self.ep.read(self.scratch, 0, length, lease.peer, addr, key, timeout=30.0)
        return self.scratch.view[:length]

    def serve(self, poll: float = 0.01, until_idle: bool = False) -> None:
        """Serve until :meth:`stop`; with ``until_idle``, also return once no slot is
        attached and live (the caller then owns the control socket again)."""
        lib, h, ev = self.lib, self.ep._h, self.ffi.new("struct ff_event *")
        poll_us = int(poll * 1e6)
        reply: Optional[tuple[int, int, int, _Slot, int]] = None
        last_control = time.monotonic()
        while not self._stop:
            if self._native is not None:  # C answers the requests; Python gets the rest
                if reply is not None:
                    slot, off, ln, lease, imm = reply
                    reply = None
                    rc = lib.ff_post_write(h, self.out._h, off, ln, lease.peer, lease.result_addr,
                                           lease.result_key, imm, slot, poll_us)
                    if rc != 0:
                        log.warning("slot %d: reply failed (%s); lease dropped", slot, self.ep.strerror(-rc))
                        self._release(slot)
                rc = lib.ff_serve_native(h, self._native, self.ring._h, self.out._h, self.slot_size, self._cslots,
                                         self.slots, int(self.handler.check_json), self._attention, ev, poll_us,
                                         self._cserved)
                self.served += int(self._cserved[0])
                self._cserved[0] = 0
            elif reply is not None:
                slot, off, ln, lease, imm = reply
                reply = None
                rc = lib.ff_reply_wait(h, self.out._h, off, ln, lease.peer, lease.result_addr,
                                       lease.result_key, imm, slot, ev, poll_us)
            else:
                rc = lib.ff_wait(h, ev, poll_us)
            if rc != 0:
                _check(rc, h)
            kind = ev.kind
            if kind in (EV_DATA, EV_NATIVE):
                imm = int(ev.data)
                slot = imm >> 16
                try:
                    done = self._run(slot, imm, (int(ev.err), int(ev.tag)) if kind == EV_NATIVE else None)
                except FabricError as exc:  # the client vanished while we read its payload
                    log.warning("slot %d: %s; lease dropped", slot, exc)
                    self._release(slot)
                    done = None
                self.served += 1
                if done is not None:
                    reply = (slot, done[0], done[1], self._leases[slot], imm)
            elif kind == EV_TX_ERROR:
                log.warning("slot %d: reply failed (%s); lease dropped", ev.tag, self.ep.strerror(ev.err))
                self._release(int(ev.tag))
            elif kind == EV_RX_ERROR:
                log.warning("fabric error: %s", self.ep.strerror(ev.err))
            now = time.monotonic()
            if kind == EV_NONE or now - last_control > poll:
                last_control = now
                self._control()
                self.apply_ends()
                if until_idle and reply is None and not self.leased:
                    return

    def stop(self) -> None:
        self._stop = True
        self._attention[0] = 1

    def close(self) -> None:
        self.sock.close(0)
        self._leases.clear()
        self._ring_view.release()
        self._out_view.release()
        self.ep.close()  # frees ring, out, scratch and staged results

    def __enter__(self) -> "RmaExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Ended(Exception):
    pass


class HandlerError(Exception):
    """Raised by a handler to fail the call with exactly ``text`` as the error."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class NativeHandler:
    """A native function as an RMA handler: the C loop calls ``native`` directly; Python
    calls it for what C hands back. ``error_text(exc)`` is the error text a failed call
    returns (default ``NativeFunctionError: <entrypoint> returned <code>: <message>``).
    ``check_json``: a result that is not JSON text fails the call (the executor's
    function model); off, results are raw bytes (the stand-alone executor)."""

    def __init__(self, native: NativeFunction, error_text: Optional[Callable[[NativeFunctionError], str]] = None,
                 check_json: bool = False):
        self.native = native
        self.error_text = error_text or (lambda exc: f"{type(exc).__name__}: {exc}")
        self.check_json = check_json

    def __call__(self, payload: memoryview) -> bytes:
        try:
            out = self.native(payload)
            if self.check_json and not json_valid(out):
                raise self.native.error(NATIVE_NOT_JSON, b"", len(out))
            return out
        except NativeFunctionError as exc:
            raise HandlerError(self.error_text(exc)) from None

    def failed(self, code: int, message: bytes, out_len: int) -> "HandlerError":
        """The error of a call the C loop made that returned ``code``."""
        return HandlerError(self.error_text(self.native.error(code, message, out_len)))


class RmaClient:
    """Invoke a leased RMA executor: ``invoke(payload) -> bytes-like``.

    ``control`` is the executor's ZeroMQ control address. The client owns its
    endpoint, its request staging buffer and its result buffer."""

    def __init__(self, control: str, config: Optional[FabricConfig] = None, timeout: float = 30.0,
                 result_size: int = DEFAULT_SLOT_SIZE, ctx: Optional[zmq.Context] = None,
                 attach: Optional[dict] = None):
        """``attach``: extra FABRIC_ATTACH fields (a leased executor wants ``token``)."""
        self.timeout = timeout
        self.ep = Endpoint(config or FabricConfig.from_env())
        self.ffi, self.lib = load()
        self._ev = self.ffi.new("struct ff_event *")
        self._ctx = ctx or zmq.Context.instance()
        self.sock = protocol.configure(self._ctx.socket(zmq.DEALER))
        self.sock.connect(control)
        self.result = self.ep.register(size=max(result_size, HSIZE + 64))
        self._rview = self.result.view
        try:
            rep = self._request(protocol.FABRIC_ATTACH, provider=self.ep.provider, name=self.ep.name,
                                result=self.result.descriptor(), **(attach or {}))
        except Exception:
            self._rview.release()
            self.sock.close(0)
            self.ep.close()
            raise
        self.slot = rep["slot"]
        self.slot_size = rep["slot_size"]
        self.ring_addr, self.ring_key = rep["ring"]["addr"], rep["ring"]["key"]
        self.peer = self.ep.insert(rep["name"])
        self.req = self.ep.register(size=self.slot_size, remote=False)
        self._qview = self.req.view
        self.broken: Optional[Exception] = None
        # what the one-call fast path (ff_invoke) needs, looked up once
        self._h, self._req_h, self._res_h = self.ep._h, self.req._h, self.result._h
        self._slot_bits = self.slot << 16
        self._inline_max = self.slot_size - HSIZE
        self._rptr = self.ffi.cast("char *", self.result._cdata) + HSIZE
        self._inv = self.ffi.new("struct ff_invoker *")
        self._inv.ep, self._inv.lmr, self._inv.res = self._h, self._req_h, self._res_h
        self._inv.peer, self._inv.raddr, self._inv.rkey = self.peer, self.ring_addr, self.ring_key
        self._inv.slot_bits = self._slot_bits
        self._ev = self.ffi.addressof(self._inv, "ev")  # one event for every path (_raise_on reads it)
        self._ff_invoke, self._unpack = self.lib.ff_invoke, self.ffi.unpack
        self._inv.timeout_us = self._inv.wait_us = self._timeout_us
        self._fast = (self._ff_invoke, self._inv, self._unpack, self._rptr, self._inline_max)

    def _request(self, msg_type: str, **fields: Any) -> dict:
        rid = os.urandom(4).hex()
        self.sock.send(protocol.encode(msg_type, rid=rid, **fields))
        if not self.sock.poll(int(self.timeout * 1000)):
            raise ExecutorLost(110, "no answer on the control channel", msg_type)
        msg = protocol.decode(self.sock.recv())
        if msg["type"] == protocol.ERROR:
            raise AttachRefused(f"{msg_type}: {msg.get('code')}: {msg.get('message')}", str(msg.get("code")))
        return msg

    def invoke(self, payload: Any = b"", timeout: Optional[float] = None,
               check: Optional[Callable[[], None]] = None, slice_s: float = 0.01) -> Any:
        """One invocation. ``timeout`` overrides the client's. With ``check``, the wait for
        the result is cut into ``slice_s`` slices and ``check()`` runs between them (it
        may raise to abandon the call; the client is then broken)."""
        if self.broken is not None:
            raise ExecutorLost(107, "this client lost its executor", str(self.broken))
        if type(payload) is bytes and timeout is None and check is None:
            ff_invoke, inv, unpack, rptr, inline_max = self._fast
            n = len(payload)
            if n <= inline_max:  # the common case in one C call (copy, write, wait)
                n = ff_invoke(inv, payload, n)
                if n >= 0:
                    return unpack(rptr, n)
                return self._invoke_more(n, self.timeout, None, slice_s)
        if timeout is None:
            timeout = self.timeout
        if type(payload) is bytes and len(payload) <= self._inline_max:
            inv = self._inv
            us = int(timeout * 1e6)
            inv.timeout_us, inv.wait_us = us, us if check is None else int(min(slice_s, timeout) * 1e6)
            try:
                n = self._ff_invoke(inv, payload, len(payload))
            finally:
                inv.timeout_us = inv.wait_us = self._timeout_us
            if n >= 0:
                return self._unpack(self._rptr, n)
            return self._invoke_more(n, timeout, check, slice_s)
        self._inv.seq = seq = (self._inv.seq + 1) & 0xFFFF
        imm = self._slot_bits | seq
        pview = memoryview(payload).cast("B")
        n = pview.nbytes
        bulk = None
        if HSIZE + n <= self.slot_size:
            HEADER.pack_into(self._qview, 0, n, 0, 0, 0, seq)
            self._qview[HSIZE: HSIZE + n] = pview
            length = HSIZE + n
        else:
            bulk = self.ep.register(payload)  # no copy: the executor reads it in place
            HEADER.pack_into(self._qview, 0, n, bulk.base, bulk.key, F_BULK, seq)
            length = HSIZE
        try:
            if check is None:
                rc = self.lib.ff_call(self._h, self._req_h, 0, length, self.peer, self.ring_addr,
                                      self.ring_key, imm, imm, self._ev, int(timeout * 1e6))
                self._raise_on(rc, timeout)
            else:
                rc = self.lib.ff_write(self._h, self._req_h, 0, length, self.peer, self.ring_addr, self.ring_key,
                                       1, imm, int(timeout * 1e6))
                if rc != 0:
                    self._raise_on(rc, timeout)
                self._wait_sliced(imm, timeout, check, slice_s)
            return self._finish(bulk)
        finally:
            if bulk is not None:
                bulk.close()

    def _invoke_more(self, n: int, timeout: float, check: Optional[Callable[[], None]], slice_s: float) -> Any:
        """After ``ff_invoke`` said FF_INVOKE_MORE or failed: the rest of the call."""
        iv = self._inv
        if n == FF_INVOKE_MORE and iv.ev.kind == EV_DATA:
            return self._finish(None)
        if n != FF_INVOKE_MORE or check is None or iv.ev.kind != EV_NONE:
            self._raise_on(n if n != FF_INVOKE_MORE else 0, timeout)
        self._wait_sliced(int(iv.data), timeout - slice_s, check, slice_s)
        return self._finish(None)

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._timeout_us = int(seconds * 1e6)
        if hasattr(self, "_inv"):
            self._inv.timeout_us = self._inv.wait_us = self._timeout_us

    def _finish(self, bulk: Optional[MemoryRegion]) -> Any:
        """The result whose header lies in the result buffer (the DATA event came)."""
        rlen, baddr, bkey, flags, seq = HEADER.unpack_from(self._rview, 0)
        if flags & F_BULK:
            out: Any = bytearray(rlen)
            with self.ep.register(out, remote=False) as region:
                self.ep.read(region, 0, rlen, self.peer, baddr, bkey, timeout=self.timeout)
        else:
            out = bytes(self._rview[HSIZE: HSIZE + rlen])
        if flags & F_ERROR:
            text = bytes(out).decode(errors="replace")
            if flags & F_ENDED:
                self.broken = RmaLeaseEnded(text)
                raise RmaLeaseEnded(text)
            raise RemoteFunctionError(text)
        return out

    def _wait_sliced(self, imm: int, timeout: float, check: Callable[[], None], slice_s: float) -> None:
        """Wait for the result signal ``imm`` in slices, running ``check()`` between them;
        raises like :meth:`_raise_on` when it does not come."""
        lib, h, ev = self.lib, self._h, self._ev
        deadline = time.monotonic() + timeout
        while True:
            try:
                check()
            except BaseException as exc:
                self.broken = exc  # the reply may still land: this client is done
                raise
            left = deadline - time.monotonic()
            rc = lib.ff_wait_match(h, imm, ev, int(max(0.0, min(slice_s, left)) * 1e6))
            if rc != 0 or ev.kind != EV_NONE or left <= 0:
                self._raise_on(rc, timeout)
                return

    def _raise_on(self, rc: int, timeout: Optional[float] = None) -> None:
        ev = self._ev
        if rc == 0 and ev.kind == EV_DATA:
            return
        try:
            if rc != 0:
                _check(rc, self.ep._h)
            if ev.kind == EV_NONE:
                raise ExecutorLost(110, "no result before the timeout", f"{self.timeout if timeout is None else timeout} s")
            raise ExecutorLost(int(ev.err), self.ep.strerror(int(ev.err)), "completion error")
        except FabricError as exc:
            self.broken = exc
            if not isinstance(exc, ExecutorLost):
                raise ExecutorLost(exc.code, exc.strerror, exc.detail) from exc
            raise

    def close(self) -> None:
        if self.ep.closed:
            return
        if self.broken is None:
            try:
                self._request(protocol.FABRIC_DETACH, slot=self.slot)
            except Exception:
                pass
        self._qview.release()
        self._rview.release()
        self.sock.close(0)
        self.ep.close()
        self.broken = self.broken or ValueError("the client is closed")  # no call reaches a freed endpoint

    def __enter__(self) -> "RmaClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- a stand-alone executor process (tests, benchmarks, the agent) ------------------
def _load_handler(entrypoint: str, code_dir: Optional[str]) -> Handler:
    if is_native_entrypoint(entrypoint):  # path/lib.so:symbol, raw bytes in and out
        return NativeHandler(NativeFunction(entrypoint, code_dir or "."))
    module_name, _, attr = entrypoint.partition(":")
    if code_dir:
        sys.path.insert(0, code_dir)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def echo(payload: memoryview) -> memoryview:
    """Built-in: return the payload (benchmarks, tests)."""
    return payload


def sink(payload: memoryview) -> bytes:
    """Built-in: take the payload, return nothing (bandwidth benchmarks)."""
    return b""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-rma-executor")
    ap.add_argument("--control", default="tcp://127.0.0.1:0", help="ZeroMQ address to bind")
    ap.add_argument("--entrypoint", default="faas_runtime.rma:echo")
    ap.add_argument("--code")
    ap.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    ap.add_argument("--slot-size", type=int, default=DEFAULT_SLOT_SIZE)
    ap.add_argument("--ready-file", help="write the bound control address here once serving")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = _load_handler(args.entrypoint, args.code)
    ex = RmaExecutor(handler, args.control, slots=args.slots, slot_size=args.slot_size)
    signal.signal(signal.SIGTERM, lambda *_: ex.stop())
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(ex.control)
        os.replace(tmp, args.ready_file)
    log.info("RMA executor on %s (%s) serving %s", ex.control, ex.ep.describe(), args.entrypoint)
    try:
        ex.serve()
    except Exception:
        log.error("executor failed:\n%s", traceback.format_exc())
        return 1
    finally:
        ex.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
