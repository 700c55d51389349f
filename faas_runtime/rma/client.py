"""The client's end of the RMA wire: :class:`RmaClient` invokes a leased executor.

It attaches over the executor's ZeroMQ control socket (FABRIC_ATTACH, with the lease
token a warm executor wants), then each invocation is one-sided: ``header + payload`` is
written into its slot of the executor's ring and the client busy-polls, in C, inside the
same call that posted the write, until the result lands in its registered result buffer.
A payload larger than the slot is registered where it lies and only its header is sent
(the executor reads it); a result larger than the result buffer is read from the
executor.

Owns: the client's end of the RMA path. May not touch: the executor's end.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator, Optional

import zmq

from faas_runtime import protocol
from faas_runtime.fabric import Endpoint, FabricConfig, FabricError, MemoryRegion, _check, load

from . import gather
from .wire import (DEFAULT_SLOT_SIZE, EV_DATA, EV_NONE, F_BULK, F_ENDED, F_ERROR, F_GATHER, FF_INVOKE_MORE, HEADER, HSIZE,
                   put_parts)


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
        self._armed = self._default_armed  # what _inv holds (set again only when it changes)
        self._fast = (self._ff_invoke, self._inv, self._unpack, self._rptr, self._inline_max)
        # Bulk data goes through memory registered once and reused (grown as needed): no
        # registration and no fresh pages per call. Requests given as parts are copied in
        # (once); large results are read into the other.
        self._bulk_out: Optional[MemoryRegion] = None
        self._bulk_in: Optional[MemoryRegion] = None

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
               check: Optional[Callable[[], None]] = None, slice_s: float = 0.01, view: bool = False) -> Any:
        """One invocation. ``payload``: bytes-like, or a list of bytes-like parts (sent as
        their concatenation, copied once). ``timeout`` overrides the client's. With
        ``check``, the wait for the result is cut into ``slice_s`` slices and ``check()``
        runs between them (it may raise to abandon the call; the client is then broken).
        ``view``: a large result may come back as a memoryview of this client's receive
        buffer, valid until its next call (no copy), or, sent gathered (a handler's result
        in parts, ``gather``), as the list of its segments: the large ones in fresh memory
        of their own, the rest read-only views valid until the next call. Large parts of
        a request are sent gathered too: registered where they lie, not copied."""
        if self.broken is not None:
            raise ExecutorLost(107, "this client lost its executor", str(self.broken))
        if type(payload) is bytes and timeout is None and check is None:
            ff_invoke, inv, unpack, rptr, inline_max = self._fast
            n = len(payload)
            if n <= inline_max:  # the common case in one C call (copy, write, wait)
                if self._armed is not self._default_armed:
                    self._arm(self._default_armed)
                n = ff_invoke(inv, payload, n)
                if n >= 0:
                    return unpack(rptr, n)
                return self._invoke_more(n, self.timeout, None, slice_s, view)
        if timeout is None:
            timeout = self.timeout
        if type(payload) is list:
            n = sum(memoryview(p).nbytes for p in payload)
            if n <= self._inline_max:
                payload = b"".join(payload)  # small: the inline path below
        if type(payload) is bytes and len(payload) <= self._inline_max:
            us = int(timeout * 1e6)
            armed = (us, us if check is None else int(min(slice_s, timeout) * 1e6))
            if armed != self._armed:  # the same timeouts call after call: set once
                self._arm(armed)
            n = self._ff_invoke(self._inv, payload, len(payload))
            if n >= 0:
                return self._unpack(self._rptr, n)
            return self._invoke_more(n, timeout, check, slice_s, view)
        self._inv.seq = seq = (self._inv.seq + 1) & 0xFFFF
        imm = self._slot_bits | seq
        bulk: list[MemoryRegion] = []
        gathered = gather.pack(self.ep, payload, self._qview, HSIZE, self.slot_size - HSIZE) \
            if type(payload) is list else None
        if gathered is not None:  # large parts registered where they lie, the rest inline
            length, bulk = gathered
            HEADER.pack_into(self._qview, 0, length, 0, 0, F_GATHER, seq)
            length += HSIZE
        elif type(payload) is list:  # in parts, more small ones than the slot holds: copied once
            region = self._bulk_out = self.ep.room(self._bulk_out, n, remote=True)
            put_parts(region.view, 0, payload)
            HEADER.pack_into(self._qview, 0, n, region.base, region.key, F_BULK, seq)
            length = HSIZE
        else:
            pview = memoryview(payload).cast("B")
            n = pview.nbytes
            if HSIZE + n <= self.slot_size:
                HEADER.pack_into(self._qview, 0, n, 0, 0, 0, seq)
                self._qview[HSIZE: HSIZE + n] = pview
                length = HSIZE + n
            else:
                bulk = [self.ep.register(payload)]  # no copy: the executor reads it in place
                HEADER.pack_into(self._qview, 0, n, bulk[0].base, bulk[0].key, F_BULK, seq)
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
            return self._finish(view)
        finally:
            for region in bulk:  # the executor has read them (or the call is abandoned)
                region.close()

    def _arm(self, armed: tuple[int, int]) -> None:
        self._inv.timeout_us, self._inv.wait_us = armed
        self._armed = armed

    def _invoke_more(self, n: int, timeout: float, check: Optional[Callable[[], None]], slice_s: float,
                     view: bool) -> Any:
        """After ``ff_invoke`` said FF_INVOKE_MORE or failed: the rest of the call."""
        iv = self._inv
        if n == FF_INVOKE_MORE and iv.ev.kind == EV_DATA:
            return self._finish(view)
        if n != FF_INVOKE_MORE or check is None or iv.ev.kind != EV_NONE:
            self._raise_on(n if n != FF_INVOKE_MORE else 0, timeout)
        self._wait_sliced(int(iv.data), timeout - slice_s, check, slice_s)
        return self._finish(view)

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._timeout_us = int(seconds * 1e6)
        self._default_armed = (self._timeout_us, self._timeout_us)
        if hasattr(self, "_inv"):
            self._arm(self._default_armed)

    def _finish(self, view: bool = False) -> Any:
        """The result whose header lies in the result buffer (the DATA event came)."""
        rlen, baddr, bkey, flags, seq = HEADER.unpack_from(self._rview, 0)
        if flags & F_GATHER and not flags & F_ERROR:
            with self._reading_result():
                if rlen > self._rview.nbytes - HSIZE:
                    raise gather.BadGather(f"a gathered result of {rlen} bytes, longer than the result buffer")
                segments = gather.unpack(self.ep, self.peer, self._rview[HSIZE: HSIZE + rlen], self.timeout)
            # ``view``: the segments (the inline ones are views of the result buffer)
            return segments if view else b"".join(segments)
        if flags & F_BULK:
            region = self._bulk_in = self.ep.room(self._bulk_in, rlen, remote=False)
            with self._reading_result():
                self.ep.read(region, 0, rlen, self.peer, baddr, bkey, timeout=self.timeout)
            out: Any = region.view[:rlen]
            if not view or flags & F_ERROR:
                out = bytearray(out)
        else:
            out = bytes(self._rview[HSIZE: HSIZE + rlen])
        if flags & F_ERROR:
            text = bytes(out).decode(errors="replace")
            if flags & F_ENDED:
                self.broken = RmaLeaseEnded(text)
                raise RmaLeaseEnded(text)
            raise RemoteFunctionError(text)
        return out

    @contextlib.contextmanager
    def _reading_result(self) -> Iterator[None]:
        """Around the reads of a result that lies at the executor: one that fails (the
        executor went away, or described its result wrongly) loses the executor."""
        try:
            yield
        except FabricError as exc:
            self.broken = exc
            raise ExecutorLost(exc.code, exc.strerror or str(exc), "reading the result") from exc
        except gather.BadGather as exc:
            self.broken = exc
            raise ExecutorLost(71, str(exc), "reading the result") from exc

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
        self._bulk_out = self._bulk_in = None  # their registrations close with the endpoint
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
