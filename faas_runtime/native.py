"""Native functions: an entrypoint ``path/libfn.so:symbol`` run through the fabric binding.

Native functions (:class:`NativeFunction`): an entrypoint ``path/libfn.so:symbol``
(the path relative to the function's code dir) names a C function with the contract
of ``csrc/faas_native.h``. The same binding dlopens it and calls it (under one mutex
that the C RMA loop shares); where the binding is absent (no libfabric, or a
container without cffi) ctypes calls it, so native functions run on every ZeroMQ
path anyway.

Owns: loading and calling native entrypoints. May not touch: ZeroMQ, the agent's state.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any, Optional

from .fabric import FabricUnavailable, load

NATIVE_OK = 0
NATIVE_TOO_SMALL = 1  # FAAS_NATIVE_TOO_SMALL: *out_len = the room the result needs
NATIVE_OVERRUN = -1  # what the C RMA loop reports when *out_len > out_cap with code 0
NATIVE_NOT_JSON = -2  # ... and when the result is not JSON text (FF_NATIVE_NOT_JSON)
NATIVE_MAX_RESULT = 1 << 30
NATIVE_FIRST_CAP = 64 * 1024
_NATIVE_RE = re.compile(r"^(?P<path>[^:]+\.so(?:\.\d+)*):(?P<symbol>[A-Za-z_][A-Za-z0-9_]*)$")


class NativeLoadError(RuntimeError):
    """A native entrypoint cannot be loaded: bad form, library missing or not loadable,
    symbol missing."""


class NativeFunctionError(RuntimeError):
    """A native function did not succeed: ``code`` is what it returned (or -1 when it
    claimed more result bytes than it had room for), ``message`` what it wrote."""

    def __init__(self, entrypoint: str, code: int, message: str, text: Optional[str] = None):
        self.entrypoint, self.code, self.message = entrypoint, code, message
        super().__init__(text or f"{entrypoint} returned {code}" + (f": {message}" if message else ""))


def json_valid(data: Any) -> bool:
    """Is ``data`` (bytes-like) one JSON value in UTF-8? The C check the RMA loop uses
    where the binding is built, else Python's json (the same language: RFC 8259 plus
    NaN and Infinity)."""
    try:
        ffi, lib = load()
    except FabricUnavailable:
        import json

        try:
            json.loads(bytes(data).decode("utf-8"))
            return True
        except ValueError:
            return False
    buf = ffi.from_buffer(data)
    return bool(lib.ff_json_valid(buf, len(buf)))


def is_native_entrypoint(entrypoint: str) -> bool:
    """``path/lib.so:symbol`` (a shared object) rather than ``module:function``."""
    lib, sep, _ = entrypoint.rpartition(":")
    return bool(sep) and re.search(r"\.so(\.\d+)*$", lib) is not None


def native_path(entrypoint: str, code_dir: str) -> tuple[str, str]:
    """(absolute library path, symbol) of a native entrypoint; the library must lie
    inside ``code_dir``. Raises NativeLoadError saying what is wrong."""
    m = _NATIVE_RE.match(entrypoint)
    if not m:
        raise NativeLoadError(f"native entrypoint must be 'path/to/lib.so:symbol' with a C identifier "
                              f"as symbol, got {entrypoint!r}")
    rel = m["path"]
    if os.path.isabs(rel):
        raise NativeLoadError(f"native library path must be relative to the code dir, got {rel!r}")
    root = os.path.realpath(code_dir)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root:
        raise NativeLoadError(f"native library {rel!r} lies outside the code dir {code_dir}")
    if not os.path.isfile(path):
        raise NativeLoadError(f"native library {rel!r} not found in the code dir {code_dir}")
    return path, m["symbol"]


class NativeFunction:
    """A loaded native function: ``fn(payload) -> bytes`` (raises NativeFunctionError).

    ``handle`` is the binding's ``ff_native *`` (the C RMA loop calls it directly), or
    None with the ctypes backend. Calls from any thread run one at a time."""

    def __init__(self, entrypoint: str, code_dir: str, backend: str = "auto"):
        self.entrypoint = entrypoint
        self.path, self.symbol = native_path(entrypoint, code_dir)
        self.handle: Any = None
        self._ct: Any = None
        self._lock = threading.Lock()
        if backend in ("auto", "cffi"):
            try:
                self._ffi, self._lib = load()
            except FabricUnavailable:
                if backend == "cffi":
                    raise
            else:
                err = self._ffi.new("char[]", 512)
                out = self._ffi.new("ff_native **")
                rc = self._lib.ff_native_open(self.path.encode(), self.symbol.encode(), out, err, 512)
                if rc != 0:
                    raise NativeLoadError(self._load_text(rc, self._ffi.string(err).decode(errors="replace")))
                self.handle = out[0]
                self.backend = "cffi"
                self._cap = NATIVE_FIRST_CAP
                self._out = self._ffi.new("char[]", self._cap)
                self._olen = self._ffi.new("uint64_t *")
                return
        import ctypes

        try:
            lib = ctypes.CDLL(self.path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            raise NativeLoadError(self._load_text(-2, str(exc))) from None
        try:
            fn = getattr(lib, self.symbol)
        except AttributeError as exc:
            raise NativeLoadError(self._load_text(-38, str(exc))) from None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_size_t)]
        fn.restype = ctypes.c_int
        self._ct, self._ctypes, self._ct_lib = fn, ctypes, lib
        self.backend = "ctypes"
        self._cap = NATIVE_FIRST_CAP
        self._out = ctypes.create_string_buffer(self._cap)
        self._olen = ctypes.c_size_t(0)

    def _load_text(self, rc: int, why: str) -> str:
        what = "cannot load the library" if rc in (-2,) else "the library has no symbol " + repr(self.symbol)
        return f"{self.entrypoint}: {what}: {why}"

    def _call_once(self, payload: Any) -> tuple[int, int]:
        if self.handle is not None:
            src = self._ffi.from_buffer(payload)
            rc = self._lib.ff_native_call(self.handle, src, len(src), self._out, self._cap, self._olen)
            return rc, int(self._olen[0])
        data = bytes(payload)
        rc = self._ct(data, len(data), self._out, self._cap, self._ctypes.byref(self._olen))
        return rc, int(self._olen.value)

    def _grow(self, cap: int) -> None:
        self._cap = cap
        if self.handle is not None:
            self._out = self._ffi.new("char[]", cap)
        else:
            self._out = self._ctypes.create_string_buffer(cap)

    def _result(self, n: int) -> bytes:
        if self.handle is not None:
            return self._ffi.buffer(self._out, n)[:]
        return self._ctypes.string_at(self._out, n)

    def __call__(self, payload: Any = b"") -> bytes:
        with self._lock:  # the result buffer is this object's: one Python caller at a time
            return self._call(payload)

    def _call(self, payload: Any) -> bytes:
        if self.handle is None and self._ct is None:
            raise NativeLoadError(f"{self.entrypoint}: closed")
        for _ in range(2):
            rc, n = self._call_once(payload)
            if rc == NATIVE_OK:
                if n > self._cap:
                    raise self.error(NATIVE_OVERRUN, b"", n)
                return self._result(n)
            if rc != NATIVE_TOO_SMALL:
                raise self.error(rc, self._result(min(n, self._cap)))
            if n <= self._cap:
                raise NativeFunctionError(self.entrypoint, rc, f"asked for a larger result buffer ({n} bytes) "
                                          f"but had {self._cap} (FAAS_NATIVE_TOO_SMALL needs *out_len > out_cap)")
            if n > NATIVE_MAX_RESULT:
                raise NativeFunctionError(self.entrypoint, rc, f"asked for a {n}-byte result buffer, above the "
                                          f"limit of {NATIVE_MAX_RESULT}")
            self._grow(n)
        raise NativeFunctionError(self.entrypoint, rc, f"still too small with {self._cap} bytes of room")

    def error(self, code: int, message: bytes, out_len: int = 0) -> NativeFunctionError:
        """The error of a call that returned ``code`` having written ``message``."""
        if code == NATIVE_OVERRUN:
            return NativeFunctionError(self.entrypoint, code, f"claimed a {out_len}-byte result, more than the "
                                       "room it was given (out_cap)")
        if code == NATIVE_NOT_JSON:
            return NativeFunctionError(self.entrypoint, 0, "", f"{self.entrypoint} returned a {out_len}-byte result "
                                       "that is not JSON text (a result must be the UTF-8 JSON text of a value)")
        return NativeFunctionError(self.entrypoint, code, bytes(message).decode("utf-8", errors="replace"))

    def close(self) -> None:
        with self._lock:
            if self.handle is not None:
                h, self.handle = self.handle, None
                self._lib.ff_native_close(h)
            self._ct = None
