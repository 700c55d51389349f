"""The executor's end of the RMA wire: a registered request ring, served by a C loop.

Set-up goes over ZeroMQ: :class:`RmaExecutor` binds a ROUTER; FABRIC_ATTACH trades
endpoint names, addresses and keys and leases one ring slot to the client. After that the
executor busy-polls its completion queue in C; a request's immediate data names its slot,
the handler runs on a memoryview of the slot (no copy), and ``header + result`` goes into
the client's registered result buffer with the same immediate data. A bulk payload is
read with ``fi_read`` into a scratch region; a result larger than the client's buffer
stays registered here until the slot's next request (the client reads it). A gathered
request (``gather``) is read segment by segment into fresh memory, handed to a handler
that takes segments (``segments=True``) as their list, joined for the others; a result
in parts that needs more than the client's buffer goes back gathered.

The loop is ``ff_serve_native`` (C) for every handler: it calls the function straight on
the ring slot, writes the result into the reply buffer and posts it. A native function
(a :class:`NativeHandler` whose function the binding loaded, ``csrc/faas_native.h``) runs
with no Python per request; a Python handler is called from the loop through the binding's
``ff_py_call`` (:meth:`RmaExecutor._call_inline`), which copies its result into the
reply (1.4 to 2.3 us a request less than a loop in Python, docs/fabric.md). Python's own
loop sees only what the C loop hands back: control messages (between polls), bulk and
gathered payloads, results larger than the client's buffer, a function that failed (a
native one's code and message come back as an ``FF_EV_NATIVE`` event and become the same
error text the Python call gives; a Python handler's outcome waits for it in
``_handed_back``), ended leases and errors.

Leases (the warm executor, ``faas_runtime.executor``): ``authorize(attach_msg)`` checks
each FABRIC_ATTACH (the lease token) and returns the lease's tag, or raises
``ProtocolError`` to refuse it; :meth:`RmaExecutor.end` (any thread) ends every slot of a
tag, and later requests in those slots are answered with the "ended" flag.

Owns: the executor's end of the RMA path. May not touch: the client's end, ZeroMQ beyond its control socket.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import zmq

from faas_runtime import protocol
from faas_runtime.fabric import Endpoint, FabricConfig, FabricError, MemoryRegion, _check, load
from faas_runtime.native import NativeFunction, NativeFunctionError, NATIVE_NOT_JSON, NATIVE_TOO_SMALL, json_valid

from . import gather
from .wire import (DEFAULT_SLOT_SIZE, DEFAULT_SLOTS, EV_DATA, EV_NATIVE, EV_NONE, EV_RX_ERROR, EV_TX_ERROR, F_BULK,
                   F_ENDED, F_ERROR, F_GATHER, HEADER, HSIZE, put_parts)

log = logging.getLogger("faas.rma")

Handler = Callable[[memoryview], Any]


@dataclass
class _Slot:
    peer: int
    result_addr: int
    result_key: int
    result_size: int
    identity: bytes
    staged: list = field(default_factory=list)  # registrations of a result the client reads (until its next request)
    bulk_out: Optional[MemoryRegion] = None  # reused for results given in parts (read before the next request)
    tag: Any = None  # what ``authorize`` returned (the lease token)
    ended: Optional[str] = None  # why the lease of this slot ended; requests get F_ENDED


class RmaExecutor:
    """Serves ``handler(payload: memoryview) -> bytes-like`` (or a list of bytes-like
    parts, sent as their concatenation) over RMA; with ``segments``, a gathered request's
    payload is the list of its segments (memoryviews: fresh writable memory for the large
    ones, read-only views of the slot for the rest).

    ``serve()`` runs until :meth:`stop` (or SIGTERM in :func:`main`); it polls
    the fabric in C and the ZeroMQ control socket between bursts."""

    def __init__(self, handler: Handler, control: str, config: Optional[FabricConfig] = None,
                 slots: int = DEFAULT_SLOTS, slot_size: int = DEFAULT_SLOT_SIZE,
                 ctx: Optional[zmq.Context] = None, authorize: Optional[Callable[[dict], Any]] = None,
                 segments: bool = False):
        if slot_size < HSIZE + 64 or slots < 1 or slots > 0xFFFF:
            raise ValueError("slot_size >= 96 bytes and 1 <= slots <= 65535")
        self.handler = handler
        self.segments = segments  # the handler takes a gathered request as its list of segments
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
        self._native_fn = native.handle if isinstance(native, NativeFunction) and native.handle is not None else None
        self._py_handle = self._py_native = None
        if self._native_fn is None:  # a Python handler: the C loop calls it through ff_py_call
            _register_python_calls(self.ffi)
            self._py_handle = self.ffi.new_handle(self)  # what ff_py_call gets back (alive until close)
            out = self.ffi.new("ff_native **")
            _check(self.lib.ff_native_python(self._py_handle, out), self.ep._h)
            self._py_native = out[0]
        self._native = self._native_fn or self._py_native
        self._check_json = int(getattr(handler, "check_json", False))
        self._handed_back: Any = _NOTHING  # a Python handler's outcome the C loop hands to _run
        self._cslots = self.ffi.new("struct ff_slot[]", slots)
        self._attention = self.ffi.new("int *")
        self._cserved = self.ffi.new("uint64_t *")

    @property
    def native_fast_path(self) -> bool:
        """True when the C loop answers requests with no Python at all (a native function)."""
        return self._native_fn is not None

    def _call_inline(self, data: Any, length: int, out: Any, cap: int, out_len: Any) -> int:
        """The C loop's call of a Python handler on an inline request (``data``: its slot):
        the result copied into the reply at ``out``; returns 0, or ``_HAND_BACK`` when it
        failed or needs more than ``cap`` bytes (the outcome then waits in ``_handed_back``
        for :meth:`_run`, so the handler runs once)."""
        ffi = self.ffi
        try:
            result = self.handler(memoryview(ffi.buffer(data, length)))
        except BaseException as exc:
            self._handed_back = exc
            return _HAND_BACK
        if type(result) is not list:  # one buffer (the common case: no list to build)
            view = memoryview(b"" if result is None else result).cast("B")
            if view.nbytes > cap:
                self._handed_back = result
                return _HAND_BACK
            ffi.memmove(out, view, view.nbytes)
            out_len[0] = view.nbytes
            return 0
        n = sum(memoryview(p).nbytes for p in result)
        if n > cap:
            self._handed_back = result
            return _HAND_BACK
        out_len[0] = put_parts(memoryview(ffi.buffer(out, cap)), 0, result)
        return 0

    def _sync_slot(self, slot: int) -> None:
        """Mirror a lease into the C slot table (only this executor's serving thread calls it;
        only the C loop reads it)."""
        c = self._cslots[slot]
        lease = self._leases.get(slot)
        if lease is None:
            c.fast = 0
            return
        c.peer, c.raddr, c.rkey, c.rsize = lease.peer, lease.result_addr, lease.result_key, lease.result_size
        c.fast = int(lease.ended is None and not lease.staged and min(lease.result_size, self.slot_size) > HSIZE)

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
        for region in (*lease.staged, lease.bulk_out):
            if region is not None:
                region.close()
        self.ep.remove(lease.peer)

    # -- data path --------------------------------------------------------------
    def _run(self, slot: int, imm: int, native_failed: Optional[tuple[int, int]] = None
             ) -> Optional[tuple[int, int]]:
        """Handle the request in ``slot``; returns (offset, length) of the reply in ``out``.
        ``native_failed``: (code, out_len) of the native function the C loop already called
        on this request (its message lies in ``out``; a Python handler's outcome in
        ``_handed_back``)."""
        handed: Any = _NOTHING
        if native_failed is not None and native_failed[0] == _HAND_BACK:
            handed, self._handed_back = self._handed_back, _NOTHING
        lease = self._leases.get(slot)
        if lease is None:
            log.warning("request in unleased slot %d ignored", slot)
            return None
        try:
            return self._run_leased(slot, lease, native_failed, handed)
        finally:
            self._sync_slot(slot)

    def _run_leased(self, slot: int, lease: _Slot, native_failed: Optional[tuple[int, int]], handed: Any
                    ) -> Optional[tuple[int, int]]:
        for region in lease.staged:  # the client read its previous result
            region.close()
        lease.staged = []
        base = slot * self.slot_size
        length, baddr, bkey, flags, seq = HEADER.unpack_from(self._ring_view, base)
        if lease.ended is None and self._ends:
            self.apply_ends()
        try:
            if lease.ended is not None:
                raise _Ended(lease.ended)
            if flags & F_BULK:
                payload = self._read_bulk(lease, length, baddr, bkey)
            elif length > self.slot_size - HSIZE:
                raise HandlerError(f"a request of {length} bytes inline in a slot of {self.slot_size}")
            else:
                payload = self._ring_view[base + HSIZE: base + HSIZE + length]
                if flags & F_GATHER:  # its large parts: read into memory the handler may keep
                    payload = gather.unpack(self.ep, lease.peer, payload, timeout=30.0)
                    if not self.segments:
                        payload = memoryview(b"".join(payload))
            if native_failed is not None and native_failed[0] == _HAND_BACK:  # a Python handler's outcome
                if isinstance(handed, BaseException):
                    raise handed
                if handed is _NOTHING:
                    raise HandlerError("the function's outcome was lost (the C loop handed back nothing)")
                result = handed
            elif native_failed is not None and native_failed[0] != NATIVE_TOO_SMALL:
                code, out_len = native_failed
                cap = min(lease.result_size, self.slot_size) - HSIZE
                message = bytes(self._out_view[base + HSIZE: base + HSIZE + min(out_len, cap)])
                raise self.handler.failed(code, message, out_len)
            else:
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
        cap = min(lease.result_size, self.slot_size) - HSIZE
        if type(result) is list:  # parts (a pickled value and its buffers): copied once, where they go
            parts = [memoryview(r).cast("B") for r in result]
            rlen = sum(r.nbytes for r in parts)
            if rlen <= cap:
                into, at = self._out_view, base + HSIZE
            elif rflags == 0 and (gathered := gather.pack(self.ep, parts, self._out_view, base + HSIZE, cap)):
                glen, lease.staged = gathered  # the large parts, registered where they lie
                HEADER.pack_into(self._out_view, base, glen, 0, 0, F_GATHER, seq)
                return base, HSIZE + glen
            else:  # more small parts than the client's buffer holds: copied once
                region = lease.bulk_out = self.ep.room(lease.bulk_out, rlen)
                into, at = region.view, 0
            put_parts(into, at, parts)
            if rlen > cap:
                HEADER.pack_into(self._out_view, base, rlen, region.base, region.key, rflags | F_BULK, seq)
                return base, HSIZE
            HEADER.pack_into(self._out_view, base, rlen, 0, 0, rflags, seq)
            return base, HSIZE + rlen
        rview = memoryview(result).cast("B")
        rlen = rview.nbytes
        if rlen <= cap:
            HEADER.pack_into(self._out_view, base, rlen, 0, 0, rflags, seq)
            self._out_view[base + HSIZE: base + HSIZE + rlen] = rview
            return base, HSIZE + rlen
        lease.staged = [self.ep.register(result)]  # no copy; the client reads it
        HEADER.pack_into(self._out_view, base, rlen, lease.staged[0].base, lease.staged[0].key, rflags | F_BULK, seq)
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
            # C answers the requests it can; Python gets the rest (and posts their replies here)
            if reply is not None:
                slot, off, ln, lease, imm = reply
                reply = None
                rc = lib.ff_post_write(h, self.out._h, off, ln, lease.peer, lease.result_addr,
                                       lease.result_key, imm, slot, poll_us)
                if rc != 0:
                    log.warning("slot %d: reply failed (%s); lease dropped", slot, self.ep.strerror(-rc))
                    self._release(slot)
            rc = lib.ff_serve_native(h, self._native, self.ring._h, self.out._h, self.slot_size, self._cslots,
                                     self.slots, self._check_json, self._attention, ev, poll_us, self._cserved)
            self.served += int(self._cserved[0])
            self._cserved[0] = 0
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
        if self._py_native is not None:
            self.lib.ff_native_close(self._py_native)
            self._py_native = self._native = None

    def __enter__(self) -> "RmaExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Ended(Exception):
    pass


_HAND_BACK = 0x48414E44  # _call_inline's return: the outcome is for _run (not a native function's code)
_NOTHING = object()
_registered_for: Any = None  # the binding whose ff_py_call is ours


def _register_python_calls(ffi: Any) -> None:
    """Define the binding's ``ff_py_call`` (once per process): the C loop's way into the
    Python handler of the executor whose handle it passes."""
    global _registered_for
    if _registered_for is ffi:
        return

    @ffi.def_extern(name="ff_py_call", error=_HAND_BACK)  # an escaped exception: Python's _run says so
    def _py_call(handle, data, length, out, cap, out_len):
        return ffi.from_handle(handle)._call_inline(data, length, out, cap, out_len)

    _registered_for = ffi


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
