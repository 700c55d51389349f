"""libfabric RMA for slurm-faas: a private raw layer and a Pythonic layer on top.

The raw layer is the cffi API-mode module ``faas_runtime._fabric`` built from
``csrc/fabric.h`` and ``csrc/fabric_*.c`` (endpoint set-up, registration, RMA
operations and the completion-polling loop, all in C). :func:`load` imports it
and is the only place that does. The Pythonic layer owns every fabric object: an
:class:`Endpoint` frees its memory regions and then itself on :meth:`close` (or
``with``), a :class:`MemoryRegion` keeps the Python buffer it registered alive
until it is closed, and every libfabric error becomes a :class:`FabricError`
carrying the ``fi_strerror`` text and the call that failed.

Configuration (environment, read by :meth:`FabricConfig.from_env`)::

    FAAS_FABRIC           provider: "tcp" (tcp;ofi_rxm, the default), "shm", "verbs",
                          "cxi", ... or "off" to use ZeroMQ alone
    FAAS_FABRIC_DOMAIN    interface / domain name ("lo", "eth0", "mlx5_0"); empty = first
    FAAS_FABRIC_NO_CQDATA 1 = signal with write + send even where remote CQ data works

Where the binding, libfabric or the provider is missing, :func:`open_endpoint_or_none`
logs one clear message (once per process) and returns None: callers then stay on
ZeroMQ.

Native functions (C entrypoints) live in :mod:`faas_runtime.native`; they share this binding.

Owns: the Pythonic layer over the libfabric binding (endpoints, memory, RMA). May not touch: ZeroMQ, the agent's state.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger("faas.fabric")

FI_ETIMEDOUT = 110  # FI_ETIMEDOUT == ETIMEDOUT on Linux
FI_ENODATA = 61
FI_EAGAIN = 11

_raw: Optional[tuple[Any, Any]] = None
_raw_error: Optional[str] = None
_fallback_said = False
_lock = threading.Lock()
_uninitialized: Any = None  # cffi's allocator of memory that is not zeroed (Endpoint.read_fresh)


class FabricUnavailable(RuntimeError):
    """libfabric, the binding or the configured provider is not usable here."""


class FabricError(OSError):
    """A libfabric call failed: ``errno`` is the positive FI_E* code, the message
    holds ``fi_strerror`` and what failed."""

    def __init__(self, code: int, strerror: str, detail: str = ""):
        super().__init__(code, f"{strerror}" + (f" ({detail})" if detail and detail not in strerror else ""))
        self.code = code
        self.detail = detail


class FabricTimeout(FabricError):
    """An operation did not complete before its timeout (peer dead or stuck)."""


def load() -> tuple[Any, Any]:
    """The raw (ffi, lib) pair; raises FabricUnavailable with the reason."""
    global _raw, _raw_error
    with _lock:
        if _raw is not None:
            return _raw
        if _raw_error is not None:
            raise FabricUnavailable(_raw_error)
        try:
            from faas_runtime import _fabric  # type: ignore[attr-defined]
        except ImportError as exc:
            _raw_error = (f"the libfabric binding is not built ({exc}); install libfabric-dev and "
                          "reinstall, or run: python3 -m faas_runtime._build_fabric")
            raise FabricUnavailable(_raw_error) from None
        _raw = (_fabric.ffi, _fabric.lib)
        return _raw


def available() -> bool:
    try:
        load()
        return True
    except FabricUnavailable:
        return False


def _check(rc: int, ep_handle: Any = None, what: str = "") -> None:
    if rc == 0:
        return
    ffi, lib = load()
    code = -rc if rc < 0 else rc
    text = ffi.string(lib.ff_strerror(code)).decode(errors="replace")
    detail = ffi.string(lib.ff_last_error(ep_handle)).decode(errors="replace") if ep_handle else what
    cls = FabricTimeout if code == FI_ETIMEDOUT else FabricError
    raise cls(code, text, detail or what)


def registrations() -> int:
    """Memory registrations open in this process (for leak checks)."""
    _, lib = load()
    return int(lib.ff_mr_live())


@dataclass(frozen=True)
class FabricConfig:
    provider: str = "tcp"
    domain: str = ""
    no_cqdata: bool = False

    @property
    def enabled(self) -> bool:
        return self.provider.lower() not in ("off", "none", "zmq", "")

    @classmethod
    def from_env(cls, env: Optional[dict[str, str]] = None) -> "FabricConfig":
        env = os.environ if env is None else env
        return cls(provider=env.get("FAAS_FABRIC", "tcp").strip(),
                   domain=env.get("FAAS_FABRIC_DOMAIN", "").strip(),
                   no_cqdata=env.get("FAAS_FABRIC_NO_CQDATA", "") not in ("", "0"))


def _say_fallback(reason: str) -> None:
    global _fallback_said
    if not _fallback_said:
        _fallback_said = True
        log.warning("libfabric RMA is off, running on ZeroMQ alone: %s", reason)


def open_endpoint_or_none(config: Optional[FabricConfig] = None) -> Optional["Endpoint"]:
    """An endpoint for ``config``, or None (after saying why, once) when RMA is off."""
    config = config or FabricConfig.from_env()
    if not config.enabled:
        _say_fallback(f"FAAS_FABRIC={config.provider!r}")
        return None
    try:
        return Endpoint(config)
    except (FabricUnavailable, FabricError) as exc:
        _say_fallback(str(exc))
        return None


class MemoryRegion:
    """A registered buffer. Owns the registration; keeps ``obj`` alive while open.

    ``base`` + offset and ``key`` are what a peer needs to reach byte ``offset``
    (see :meth:`descriptor`)."""

    def __init__(self, endpoint: "Endpoint", obj: Any, access: int):
        ffi, lib = load()
        self._ffi, self._lib = ffi, lib
        self.endpoint = endpoint
        self.obj = obj
        self._cdata = ffi.from_buffer(obj)  # no copy; read-only objects are fine for remote reads
        self.size = len(self._cdata)
        out = ffi.new("ff_mr **")
        _check(lib.ff_mr_reg(endpoint._h, self._cdata, self.size, access, out), endpoint._h)
        self._h = out[0]
        self.key = int(lib.ff_mr_key(self._h))
        self.base = int(lib.ff_mr_base(self._h))
        self.address = int(ffi.cast("uintptr_t", self._cdata))
        endpoint._regions.add(self)

    @property
    def view(self) -> memoryview:
        return memoryview(self.obj).cast("B")

    def descriptor(self) -> dict[str, int]:
        return {"addr": self.base, "key": self.key, "size": self.size}

    @property
    def closed(self) -> bool:
        return self._h is None

    def close(self) -> None:
        if self._h is not None:
            h, self._h = self._h, None
            self._lib.ff_mr_close(h)
            self.endpoint._regions.discard(self)
            self._cdata = None
            self.obj = None

    def __enter__(self) -> "MemoryRegion":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


ACTIVITY = {0: "poll-time", 1: "counter"}  # FF_ACTIVITY_*: how a memory server sees one-sided use


class Endpoint:
    """An RDM endpoint with its fabric, domain, address vector and completion queue.
    ``serve``: a memory server's endpoint (its progress loop sees one-sided use through
    a remote-operation counter where the provider has one, else from poll times;
    ``activity`` says which)."""

    def __init__(self, config: Optional[FabricConfig] = None, serve: bool = False):
        ffi, lib = load()
        self._ffi, self._lib = ffi, lib
        self.config = config or FabricConfig.from_env()
        self._regions: set[MemoryRegion] = set()
        out = ffi.new("ff_ep **")
        flags = (lib.FF_OPEN_NO_CQDATA if self.config.no_cqdata else 0) | (lib.FF_OPEN_SERVE if serve else 0)
        rc = lib.ff_ep_open(self.config.provider.encode(), self.config.domain.encode(), flags, out)
        self._h = out[0]
        if rc != 0:
            try:
                _check(rc, self._h)
            finally:
                lib.ff_ep_close(self._h)
                self._h = ffi.NULL
        d = ffi.new("struct ff_desc *")
        _check(lib.ff_ep_describe(self._h, d), self._h)
        self.provider = ffi.string(d.provider).decode()
        self.fabric = ffi.string(d.fabric).decode()
        self.domain = ffi.string(d.domain).decode()
        self.mr_mode = int(d.mr_mode)
        self.cq_data_size = int(d.cq_data_size)
        self.use_cqdata = bool(d.use_cqdata)
        self.virt_addr = bool(d.virt_addr)
        self.activity = ACTIVITY.get(int(d.activity), "poll-time")
        buf = ffi.new("char[]", max(int(d.addrlen), 1))
        n = ffi.new("uint64_t *", int(d.addrlen))
        _check(lib.ff_ep_name(self._h, buf, n), self._h)
        self.name = bytes(ffi.buffer(buf, n[0]))
        self._event = ffi.new("struct ff_event *")

    # -- description and addressing --------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"provider": self.provider, "fabric": self.fabric, "domain": self.domain,
                "mr_mode": self.mr_mode, "cq_data_size": self.cq_data_size,
                "signal": "writedata" if self.use_cqdata else "write+send", "activity": self.activity}

    def insert(self, name: bytes) -> int:
        """Add a peer's endpoint name to the address vector; returns its address."""
        out = self._ffi.new("uint64_t *")
        _check(self._lib.ff_av_insert(self._h, name, out), self._h)
        return int(out[0])

    def remove(self, peer: int) -> None:
        self._lib.ff_av_remove(self._h, peer)

    # -- registration -----------------------------------------------------
    def register(self, obj: Any = None, size: int = 0, remote: bool = True) -> MemoryRegion:
        """Register ``obj`` (any contiguous buffer), or a new zeroed bytearray of ``size``."""
        if obj is None:
            obj = bytearray(size)
        return MemoryRegion(self, obj, self._lib.FF_ACCESS_REMOTE if remote else self._lib.FF_ACCESS_LOCAL)

    def room(self, region: Optional[MemoryRegion], size: int, remote: bool = True) -> MemoryRegion:
        """``region`` if it holds ``size`` bytes, else a new one (the next power of two, at
        least 64 KiB) in its place: a buffer registered once and reused, grown as needed."""
        if region is not None and region.size >= size:
            return region
        if region is not None:
            region.close()
        return self.register(size=1 << max(16, (size - 1).bit_length()), remote=remote)

    # -- one-sided operations ----------------------------------------------
    def write(self, region: MemoryRegion, offset: int, length: int, peer: int, raddr: int, rkey: int,
              data: Optional[int] = None, timeout: float = 30.0) -> None:
        _check(self._lib.ff_write(self._h, region._h, offset, length, peer, raddr, rkey,
                                  0 if data is None else 1, data or 0, _us(timeout)), self._h)

    def read(self, region: MemoryRegion, offset: int, length: int, peer: int, raddr: int, rkey: int,
             timeout: float = 30.0) -> None:
        _check(self._lib.ff_read(self._h, region._h, offset, length, peer, raddr, rkey, _us(timeout)), self._h)

    def read_fresh(self, length: int, peer: int, raddr: int, rkey: int, timeout: float = 30.0) -> memoryview:
        """``length`` bytes of the peer's, read into fresh memory of their own: a writable
        memoryview that owns it (its reader may keep it: no copy out of a reused buffer).
        The memory is not zeroed first (the read overwrites it: a 1 MiB zero-fill costs
        what half a copy does); its registration lasts the read."""
        global _uninitialized
        if _uninitialized is None:
            _uninitialized = self._ffi.new_allocator(should_clear_after_alloc=False)
        into = memoryview(self._ffi.buffer(_uninitialized("char[]", max(length, 1))))[:length]
        with self.register(into, remote=False) as region:
            self.read(region, 0, length, peer, raddr, rkey, timeout=timeout)
        return into

    def transfer(self, is_read: bool, region: MemoryRegion, offset: int, length: int, peer: int, raddr: int,
                 rkey: int, timeout: float = 30.0, check: Optional[Callable[[], None]] = None,
                 slice_s: float = 0.25) -> None:
        """A read or write that waits in ``slice_s`` slices and runs ``check()`` between
        them (it may raise, e.g. when the peer is gone: the transfer is then abandoned
        and the exception propagates). Without ``check``, :meth:`read` / :meth:`write`."""
        if check is None:
            (self.read if is_read else self.write)(region, offset, length, peer, raddr, rkey, timeout=timeout)
            return
        ffi, lib = self._ffi, self._lib
        out = ffi.new("ff_op **")
        _check(lib.ff_post_rma(self._h, int(is_read), region._h, offset, length, peer, raddr, rkey, _us(timeout), out),
               self._h)
        op, deadline = out[0], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                rc = lib.ff_op_wait(self._h, op, _us(max(0.0, min(slice_s, left))))
                if rc != -FI_EAGAIN:
                    op = None  # done or failed: no longer ours
                    _check(rc, self._h)
                    return
                if left <= 0:
                    raise FabricTimeout(FI_ETIMEDOUT, self.strerror(FI_ETIMEDOUT),
                                        f"{'read' if is_read else 'write'} of {length} bytes not done in {timeout:g} s")
                check()
        finally:
            if op is not None and not self.closed:
                lib.ff_op_abandon(self._h, op)  # freed with the endpoint at the latest

    def wait(self, timeout: float) -> tuple[int, int, int, int]:
        """Next event as (kind, err, data, tag); kind 0 on timeout."""
        ev = self._event
        _check(self._lib.ff_wait(self._h, ev, _us(timeout)), self._h)
        return ev.kind, ev.err, ev.data, ev.tag

    def strerror(self, code: int) -> str:
        return self._ffi.string(self._lib.ff_strerror(code)).decode(errors="replace")

    # -- lifetime -----------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._h is None or self._h == self._ffi.NULL

    def close(self) -> None:
        """Close the endpoint first (cancels whatever is in flight), then free
        the regions: no transfer lands in freed memory."""
        if self.closed:
            return
        h, self._h = self._h, None
        self._lib.ff_ep_shutdown(h)
        for r in list(self._regions):
            r.close()
        self._lib.ff_ep_close(h)

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net; owners call close()
        try:
            self.close()
        except Exception:
            pass


def _us(seconds: Optional[float]) -> int:
    return -1 if seconds is None or seconds < 0 else int(seconds * 1e6)
