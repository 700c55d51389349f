"""Munge credentials through libmunge: encode and decode without forking munge/unmunge.

The raw layer is the cffi API-mode module ``faas_runtime._munge`` (built by
``faas_runtime/_build_munge.py`` against Debian's libmunge-dev), imported here once;
without it :func:`available` is False and every call raises :class:`MungeUnavailable`.
This layer owns everything libmunge hands out: each call creates its own ``munge_ctx``
and destroys it, and frees the credential string (``munge_encode``) and the payload
(``munge_decode``, also on refusal) with C ``free``. A ctx cached per thread would save
about 3 µs of a ~100 µs decode (bench/bench_munge.py), so there is none.
cffi releases the GIL around ``munge_encode``/``munge_decode``, so decodes from many
threads overlap in munged; nothing here is shared between calls, so it is thread-safe.

Every libmunge error becomes a :class:`MungeError` whose ``code`` is one of
``"replayed"``, ``"expired"`` (also a rewound credential: its time is in the
future), ``"invalid"`` (malformed, or not made with this munged's key), ``"socket"``
(munged not reachable) or ``"other"``, and whose message carries ``munge_strerror``'s
text, e.g. "credential refused: Replayed credential".

Owns: the libmunge binding. May not touch: anything but munged's socket.
"""
from __future__ import annotations

import os
import socket as _socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

_INT_MAX = 2**31 - 1


class MungeError(Exception):
    """libmunge refused or failed: ``code`` is the class of failure, ``errno`` the
    munge_err_t value (0 where no libmunge call was made)."""

    def __init__(self, code: str, message: str, errno: int = 0):
        super().__init__(message)
        self.code = code
        self.errno = errno


class MungeUnavailable(MungeError):
    """The libmunge binding is not built here."""

    def __init__(self, message: str):
        super().__init__("other", message)


@dataclass(frozen=True)
class Credential:
    uid: int
    gid: int
    payload: bytes
    addr: str  # origin IPv4 address, dotted; "" if unknown


try:
    from faas_runtime import _munge  # type: ignore[attr-defined]
except ImportError as _exc:  # the binding is optional at import time; calls say why it is missing
    _munge = None
    _MISSING = (f"the libmunge binding is not built ({_exc}); install libmunge-dev and reinstall, "
                "or run: python3 -m faas_runtime._build_munge")
    _CODES: dict[int, str] = {}
else:
    _CODES = {getattr(_munge.lib, name): code for code, names in {
        "replayed": ["EMUNGE_CRED_REPLAYED"],
        "expired": ["EMUNGE_CRED_EXPIRED", "EMUNGE_CRED_REWOUND"],
        "invalid": ["EMUNGE_CRED_INVALID", "EMUNGE_BAD_CRED", "EMUNGE_BAD_VERSION", "EMUNGE_BAD_CIPHER",
                    "EMUNGE_BAD_MAC", "EMUNGE_BAD_ZIP", "EMUNGE_BAD_REALM"],
        "socket": ["EMUNGE_SOCKET", "EMUNGE_TIMEOUT"],
    }.items() for name in names}


def _load() -> tuple[Any, Any]:
    """The raw (ffi, lib) pair; MungeUnavailable if the binding is not built."""
    if _munge is None:
        raise MungeUnavailable(_MISSING)
    return _munge.ffi, _munge.lib


def available() -> bool:
    """True when the compiled libmunge binding imports."""
    try:
        _load()
        return True
    except MungeUnavailable:
        return False


def _error(ctx: Any, err: int, what: str) -> MungeError:
    ffi, lib = _load()
    text = ffi.string(lib.munge_strerror(err)).decode(errors="replace")
    detail_p = lib.munge_ctx_strerror(ctx)
    detail = ffi.string(detail_p).decode(errors="replace") if detail_p != ffi.NULL else ""
    message = f"{what}: {text}" + (f" ({detail})" if detail and detail != text else "")
    return MungeError(_CODES.get(err, "other"), message, err)


@contextmanager
def _context(socket: Optional[str], ttl: Optional[int] = None) -> Iterator[Any]:
    """A fresh munge_ctx for one call, destroyed on exit."""
    ffi, lib = _load()
    ctx = lib.munge_ctx_create()
    if ctx == ffi.NULL:
        raise MemoryError("munge_ctx_create failed")
    try:
        options = []
        if socket is not None:
            options.append((lib.MUNGE_OPT_SOCKET, ffi.new("char[]", os.fsencode(socket))))
        if ttl is not None:
            options.append((lib.MUNGE_OPT_TTL, ffi.cast("int", ttl)))
        for opt, value in options:
            err = lib.munge_ctx_set(ctx, opt, value)
            if err != lib.EMUNGE_SUCCESS:
                raise _error(ctx, err, "munge context refused an option")
        yield ctx
    finally:
        lib.munge_ctx_destroy(ctx)


def encode(payload: bytes, socket: Optional[str] = None, ttl: Optional[int] = None) -> str:
    """A credential for ``payload`` from the munged at ``socket`` (its default socket
    if None); ``ttl`` in seconds (None: munged's default, -1: its maximum)."""
    payload = bytes(payload)
    if len(payload) > _INT_MAX:
        raise ValueError("munge payload too large")
    if ttl is not None and not -1 <= int(ttl) <= _INT_MAX:
        raise ValueError(f"munge ttl must be -1 or a number of seconds, not {ttl}")
    ffi, lib = _load()
    out = ffi.new("char **")
    with _context(socket, ttl) as ctx:
        err = lib.munge_encode(out, ctx, ffi.from_buffer(payload), len(payload))
        try:
            if err != lib.EMUNGE_SUCCESS:
                raise _error(ctx, err, "credential not created")
            return ffi.string(out[0]).decode("ascii")
        finally:
            lib.free(out[0])


def decode(cred: str, socket: Optional[str] = None) -> Credential:
    """The identity and payload that ``cred`` proves; MungeError if munged refuses it
    (each credential decodes once: a second decode is ``"replayed"``)."""
    try:
        raw = cred.strip().encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        raise MungeError("invalid", "credential refused: not an ASCII string") from None
    if b"\0" in raw:
        raise MungeError("invalid", "credential refused: NUL byte in credential")
    ffi, lib = _load()
    buf, length = ffi.new("void **"), ffi.new("int *")
    uid, gid = ffi.new("uid_t *"), ffi.new("gid_t *")
    with _context(socket) as ctx:
        err = lib.munge_decode(raw, ctx, buf, length, uid, gid)
        try:
            if err != lib.EMUNGE_SUCCESS:
                raise _error(ctx, err, "credential refused")
            payload = ffi.unpack(ffi.cast("char *", buf[0]), length[0]) if buf[0] != ffi.NULL else b""
        finally:
            lib.free(buf[0])  # allocated on some refusals too (replayed, expired)
        addr = ffi.new("struct in_addr *")
        if lib.munge_ctx_get(ctx, lib.MUNGE_OPT_ADDR4, addr) != lib.EMUNGE_SUCCESS or addr.s_addr == 0:
            origin = ""
        else:
            origin = _socket.inet_ntoa(ffi.buffer(addr)[:4])
    return Credential(uid=int(uid[0]), gid=int(gid[0]), payload=payload, addr=origin)
