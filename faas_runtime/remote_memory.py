"""Remote memory: serve a registered buffer in lent memory; read and write it from elsewhere.

The built-in memory-serving function (the paper's remote memory) is
:class:`MemoryServer`: it maps ``size`` bytes, registers them for remote reads and
writes, answers ``fabric-attach`` on a ZeroMQ ROUTER with the endpoint name, the
address, key, size and the current epoch, and keeps libfabric's progress engine
running in a C loop on a thread (tcp and shm only move data while the target polls;
the loop backs off when idle, see :class:`MemoryServer`).

:class:`RemoteMemory` is the client: ``read(offset, n)``, ``read_into(offset, buf)``,
``write(offset, data)``, ``size``. Transfers are one-sided RMA; the server's CPU
runs no Python per access.

Revocation and the epoch check: the region starts with a 64-byte control block
holding the epoch (a random non-zero 64-bit number). :meth:`MemoryServer.revoke`
stores 0 there first, then stops progress, closes the registration, unmaps the
buffer and resumes progress (so clients get prompt error completions, not hangs).
Every client access reads the epoch word *after* its data transfer completed and
raises :class:`RemoteMemoryRevoked` unless it still holds the epoch the client
attached with; a transfer that races the revoke either fails (the key is gone) or
sees the changed epoch. So a client never returns data from a revoked lend.
Concurrent writers to the same bytes are the application's business.

Leased (``token``; faas_runtime/memory_lease.py starts the server for a memory lease,
``slurm_faas.remote_memory`` is the client): FABRIC_ATTACH and MEM_REVOKE must carry the
lease's token, or get an ``auth`` error (``PermissionError`` in the client); PING stays open
(it tells only whether the memory is still served).

    python -m faas_runtime.remote_memory --size 1G --control tcp://127.0.0.1:5600

Owns: serving and reading a job's spare memory over RMA. May not touch: the queue.
"""
from __future__ import annotations

import argparse
import hmac
import logging
import mmap
import os
import signal
import struct
import sys
import threading
from typing import Any, Optional

import zmq

from faas_runtime import protocol
from faas_runtime.fabric import Endpoint, FabricConfig, FabricError, MemoryRegion, load

log = logging.getLogger("faas.remote_memory")

CONTROL = 64  # bytes before the served data: epoch word + padding
REVOKED = 0


class RemoteMemoryRevoked(RuntimeError):
    """The lend behind this remote memory was revoked; the buffer is gone."""

    code = protocol.E_REVOKED


class RemoteMemoryLost(RemoteMemoryRevoked):
    """The memory server is gone (killed, or unreachable): the buffer is lost as with a
    revoke (a subclass, so code that handles revokes handles this too)."""


SPIN_US = 2_000  # busy-poll this long after the last use
NAP_US = 500  # then back off: sleeps from 20 us doubling up to this


class MemoryServer:
    """Serves ``size`` bytes. ``spin_us``/``nap_us`` shape the progress loop (C,
    ``ff_progress_loop``): it busy-polls while clients use the memory (one-sided
    transfers are seen by a counter of remote operations where the provider has one,
    shm, else by the work the provider does in a poll, tcp), and after
    ``spin_us`` without use backs off with sleeps growing from 20 us to ``nap_us``,
    so an idle server does not burn its core; the first access after idle waits at
    most ``nap_us`` longer. ``nap_us=0``: busy-poll always (the lowest latency)."""

    def __init__(self, size: int, control: str = "tcp://127.0.0.1:0", config: Optional[FabricConfig] = None,
                 spin_us: int = SPIN_US, nap_us: int = NAP_US, ctx: Optional[zmq.Context] = None,
                 token: Optional[str] = None, sock: Optional[zmq.Socket] = None):
        """``token``: attach and revoke only with it (a memory lease). ``sock``: a ROUTER
        already bound, used as the control socket (``control`` is then its address)."""
        self.ffi, self.lib = load()
        self.ep = Endpoint(config or FabricConfig.from_env(), serve=True)
        self.size = size
        self._map: Optional[mmap.mmap] = mmap.mmap(-1, CONTROL + size)
        self.region: Optional[MemoryRegion] = self.ep.register(self._map)
        self.epoch = struct.unpack("<Q", os.urandom(8))[0] | 1
        self._epoch_ptr = self.ffi.from_buffer(self._map)
        self.lib.ff_store64(self._epoch_ptr, self.epoch)
        self._spin_us, self._nap_us = spin_us, nap_us
        self._stop = self.ffi.new("int *")
        self._thread: Optional[threading.Thread] = None
        self._ctx = ctx or zmq.Context.instance()
        self.token = token
        if sock is not None:
            self.sock, control = sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock = protocol.configure(self._ctx.socket(zmq.ROUTER))
            host = control[: control.rfind(":")]
            if control.endswith(":0"):
                control = f"{host}:{self.sock.bind_to_random_port(host)}"
            else:
                self.sock.bind(control)
        self.control = control
        self.revoked = False
        self._start_progress()

    # -- progress thread (the loop is C; cffi releases the GIL around it) ---------
    def _start_progress(self) -> None:
        self._stop[0] = 0
        self._thread = threading.Thread(target=self._progress, name="fabric-progress", daemon=True)
        self._thread.start()

    def _progress(self) -> None:
        try:
            rc = self.lib.ff_progress_loop(self.ep._h, self._stop, self._spin_us, self._nap_us)
            if rc:
                log.error("progress loop stopped: %s", self.ep.strerror(-rc))
        except Exception:
            log.exception("progress thread failed")

    def _stop_progress(self) -> None:
        if self._thread is not None:
            self._stop[0] = 1
            self._thread.join()
            self._thread = None

    # -- lend lifecycle ---------------------------------------------------------------
    def revoke(self) -> None:
        """Release the buffer: epoch first, then the registration, then the memory."""
        if self.revoked:
            return
        self.revoked = True
        self.lib.ff_store64(self._epoch_ptr, REVOKED)
        self._stop_progress()
        self._epoch_ptr = None
        if self.region is not None:
            self.region.close()
            self.region = None
        if self._map is not None:
            # Give the pages back to the batch job now, but keep the mapping until close():
            # on shm a transfer already in flight may still touch these addresses after the
            # deregistration, and must read zeros (epoch 0 = revoked), not fault.
            # MADV_REMOVE frees a shared mapping's backing pages (DONTNEED would only unmap
            # them from this process and keep the data).
            self._map.madvise(mmap.MADV_REMOVE)
        self._start_progress()
        log.info("remote memory revoked: %d bytes released", self.size)

    def _release_memory(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def handle(self, timeout_ms: int = 100) -> None:
        """Answer control requests arriving within ``timeout_ms``."""
        if self.sock.poll(timeout_ms):
            protocol.answer_pending(self.sock, lambda _ident, msg: self._answer(msg))

    def _holder(self, msg: dict) -> bool:
        """Whether ``msg`` may attach or revoke: it carries the lease's token (or none is set)."""
        if self.token is None:
            return True
        token = msg.get("token")
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())

    def _answer(self, msg: dict) -> bytes:
        rid = msg.get("rid")
        if msg["type"] in (protocol.FABRIC_ATTACH, protocol.MEM_REVOKE) and not self._holder(msg):
            log.warning("refused %s without this lease's token", msg["type"])
            return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_AUTH,
                                   message="this remote memory is leased: only its lease's token attaches")
        if msg["type"] == protocol.FABRIC_ATTACH:
            if self.revoked or self.region is None:
                return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_REVOKED,
                                       message="this remote memory was revoked")
            if msg.get("provider") != self.ep.provider:
                return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_INVALID,
                                       message=f"server runs provider {self.ep.provider!r}")
            return protocol.encode(protocol.OK, rid=rid, name=self.ep.name, addr=self.region.base,
                                   key=self.region.key, size=self.size, epoch=self.epoch)
        if msg["type"] == protocol.MEM_REVOKE:
            self.revoke()
            return protocol.encode(protocol.OK, rid=rid)
        if msg["type"] == protocol.PING:
            return protocol.encode(protocol.OK, rid=rid, revoked=self.revoked, size=self.size)
        return protocol.encode(protocol.ERROR, rid=rid, code=protocol.E_UNKNOWN_TYPE,
                               message=f"unknown type {msg['type']!r}")

    def close(self) -> None:
        self.revoke()
        self._stop_progress()
        self.sock.close(0)
        self.ep.close()
        self._release_memory()

    def __enter__(self) -> "MemoryServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RemoteMemory:
    """A client of a :class:`MemoryServer` at ZeroMQ address ``control``.

    Every access raises :class:`RemoteMemoryRevoked` once the lend is revoked, and
    :class:`RemoteMemoryLost` (a subclass) once the server is gone: a transfer that does
    not complete within ``slice_s`` makes the client ask the server over its control
    channel (PING, answered within ``ping_timeout``) whether it still serves; no answer =
    lost, "revoked" = revoked. So a killed server costs about ``slice_s + ping_timeout``,
    not the operation ``timeout`` (on shm nothing else tells the client)."""

    def __init__(self, control: str, config: Optional[FabricConfig] = None, timeout: float = 30.0,
                 ctx: Optional[zmq.Context] = None, slice_s: float = 0.25, ping_timeout: float = 2.0,
                 token: Optional[str] = None):
        self.timeout = timeout
        self.control, self.slice_s, self.ping_timeout = control, slice_s, ping_timeout
        self._ctx = ctx or zmq.Context.instance()
        self.ffi, self.lib = load()
        self.ep = Endpoint(config or FabricConfig.from_env())
        try:
            sock = protocol.configure(self._ctx.socket(zmq.DEALER))
            try:
                sock.connect(control)
                sock.send(protocol.encode(protocol.FABRIC_ATTACH, rid="a", provider=self.ep.provider,
                                          name=self.ep.name, **({"token": token} if token is not None else {})))
                if not sock.poll(int(timeout * 1000)):
                    raise TimeoutError(f"no answer from the memory server at {control}")
                rep = protocol.decode(sock.recv())
            finally:
                sock.close(0)
            if rep["type"] == protocol.ERROR:
                if rep.get("code") == protocol.E_REVOKED:
                    raise RemoteMemoryRevoked(rep.get("message"))
                if rep.get("code") == protocol.E_AUTH:
                    raise PermissionError(rep.get("message"))
                raise RuntimeError(f"{rep.get('code')}: {rep.get('message')}")
            self.size = int(rep["size"])
            self.epoch = int(rep["epoch"])
            self._addr, self._key = int(rep["addr"]), int(rep["key"])
            self.peer = self.ep.insert(rep["name"])
            self._epoch_buf = self.ep.register(size=8, remote=False)
        except BaseException:
            self.ep.close()
            raise
        self.revoked = False
        self.lost = False

    def buffer(self, size: int) -> MemoryRegion:
        """A registered local buffer for zero-copy :meth:`read_into` / :meth:`write`."""
        return self.ep.register(size=size, remote=False)

    def _bounds(self, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise IndexError(f"[{offset}, {offset + n}) is outside the remote memory of {self.size} bytes")

    def _still_served(self) -> None:
        """Between slices of a slow transfer: is the server alive and the lend not revoked?"""
        state = self._ping()
        if state is None:
            self._lost(f"no answer from the memory server at {self.control} within {self.ping_timeout:g} s")
        if state.get("revoked"):
            self._revoked("the server says so")

    def _ping(self) -> Optional[dict]:
        sock = protocol.configure(self._ctx.socket(zmq.DEALER))
        try:
            sock.connect(self.control)
            sock.send(protocol.encode(protocol.PING, rid="p"))
            if not sock.poll(int(self.ping_timeout * 1000)):
                return None
            return protocol.decode(sock.recv())
        except (zmq.ZMQError, protocol.ProtocolError):
            return None
        finally:
            sock.close(0)

    def _move(self, is_read: bool, region: MemoryRegion, offset: int, n: int, raddr: int) -> None:
        self.ep.transfer(is_read, region, offset, n, self.peer, raddr, self._key, timeout=self.timeout,
                         check=self._still_served, slice_s=self.slice_s)

    def _check_epoch(self) -> None:
        try:
            self._move(True, self._epoch_buf, 0, 8, self._addr)
        except FabricError as exc:
            self._failed(f"epoch read failed: {exc}")
        if struct.unpack_from("<Q", self._epoch_buf.view, 0)[0] != self.epoch:
            self._revoked("epoch changed")

    def _failed(self, why: str) -> None:
        """A transfer failed: lost if the server does not answer, else revoked."""
        state = self._ping()
        if state is None:
            self._lost(why)
        self._revoked(why)

    def _revoked(self, why: str) -> None:
        self.revoked = True
        raise RemoteMemoryRevoked(f"the remote memory was revoked ({why})")

    def _lost(self, why: str) -> None:
        self.revoked = self.lost = True
        raise RemoteMemoryLost(f"the memory server is gone ({why})")

    def _transfer(self, is_read: bool, offset: int, buf: Any) -> None:
        if self.lost:
            raise RemoteMemoryLost("the memory server is gone")
        if self.revoked:
            raise RemoteMemoryRevoked("the remote memory was revoked")
        region = buf if isinstance(buf, MemoryRegion) else self.ep.register(buf, remote=False)
        try:
            n = region.size
            self._bounds(offset, n)
            try:
                self._move(is_read, region, 0, n, self._addr + CONTROL + offset)
            except FabricError as exc:
                self._check_epoch()  # raises RemoteMemoryRevoked/Lost when that is why
                raise exc
            self._check_epoch()
        except RemoteMemoryRevoked:
            # A transfer given up on may still be in flight: close the endpoint (cancels it)
            # before any buffer is released. This client is done anyway.
            self.ep.close()
            raise
        finally:
            if region is not buf:
                region.close()

    def read_into(self, offset: int, buf: Any) -> None:
        """Fill ``buf`` (writable buffer or a :meth:`buffer`) from ``offset``."""
        self._transfer(True, offset, buf)

    def read(self, offset: int, n: int) -> bytes:
        out = bytearray(n)
        self._transfer(True, offset, out)
        return bytes(out)

    def write(self, offset: int, data: Any) -> None:
        """Store ``data`` at ``offset``; raises RemoteMemoryRevoked if the lend
        was revoked (the data may then not be stored)."""
        self._transfer(False, offset, data)

    def close(self) -> None:
        self.ep.close()

    def __enter__(self) -> "RemoteMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def parse_size(text: str) -> int:
    """Bytes from "4096", "512K", "64M", "2G" (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-remote-memory")
    ap.add_argument("--size", type=parse_size, required=True)
    ap.add_argument("--control", default="tcp://127.0.0.1:0")
    ap.add_argument("--spin-us", type=int, default=SPIN_US, help="busy-poll this long after the last use")
    ap.add_argument("--nap-us", type=int, default=NAP_US, help="longest back-off sleep when idle (0: always spin)")
    ap.add_argument("--ready-file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # revoke: release the buffer, then exit
    with MemoryServer(args.size, args.control, spin_us=args.spin_us, nap_us=args.nap_us) as srv:
        if args.ready_file:
            with open(args.ready_file + ".tmp", "w") as fh:
                fh.write(srv.control)
            os.replace(args.ready_file + ".tmp", args.ready_file)
        log.info("serving %d bytes on %s (%s)", srv.size, srv.control, srv.ep.describe())
        while not stop.is_set():
            srv.handle(100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
