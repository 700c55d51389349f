"""What crosses the executor's wire: payloads in, return values out, each bounded.

Owns: turning a CALL's payload into arguments and a return value into RESULT fields.
May not touch: sockets, the agent's state.
"""
from __future__ import annotations

import json
from typing import Any

from . import protocol as P


class NotJSON(Exception):
    """A return value that cannot be sent: not JSON (a set, numpy.int64, NaN) or too large."""


def value_to_json(value: Any) -> str:
    """A return value as strict JSON text (no NaN or Infinity, which JSON does not have),
    at most ``protocol.MAX_RESULT_BYTES``."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NotJSON(f"the return value is not JSON: {type(exc).__name__}: {exc} (return lists, dicts, "
                      "str, int, float, bool or None; e.g. int(x) for numpy.int64, x.tolist() for an array)") from None
    if len(text) > P.MAX_RESULT_BYTES:
        raise NotJSON(f"the return value is {len(text)} bytes of JSON; at most {P.MAX_RESULT_BYTES} are kept "
                      "(write large results to a file and return its path)")
    return text


def value_out(value: Any, binary: bool) -> dict[str, Any]:
    """A return value as RESULT fields: bytes (``VALUE_BIN``) from a binary call that
    returned bytes-like data, else JSON text (``value_json``); each bounded."""
    if binary and isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) > P.MAX_RESULT_BYTES:
            raise NotJSON(f"the return value is {len(data)} bytes; at most {P.MAX_RESULT_BYTES} are kept "
                          "(write large results to a file and return its path)")
        return {P.VALUE_BIN: data}
    return {"value_json": value_to_json(value)}


def call_payload(msg: dict) -> tuple[Any, bool]:
    """A CALL's payload: (bytes, True) for a binary one, (JSON text, False) otherwise.
    Binary payloads come as ``PAYLOAD_BIN``, or as bytes where JSON text was (a RUN whose
    ``payload_json`` the co-scheduler filled with a stored binary payload)."""
    data = msg.get(P.PAYLOAD_BIN, msg.get("payload_json", "null"))
    if isinstance(data, bytes):
        return data, True
    if not isinstance(data, str):
        raise P.ProtocolError(P.E_MALFORMED, "a payload is JSON text or bytes")
    return data, False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Ask glibc's malloc to serve blocks up to ``mmap_threshold`` from its heap and to keep
    up to ``trim_threshold`` of freed heap mapped, so that a call's large buffers (a 1 MiB
    payload, its copies, the result) reuse memory already faulted in instead of fresh
    pages: a fresh page costs a fault (about 1 ms per MiB on a virtual machine), more than
    the copy. The executor's cgroup still bounds what it holds. False where there is no
    glibc (musl images)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def bounded_traceback(text: str) -> str:
    """A traceback's end: the frames nearest the error matter most."""
    return text if len(text) <= P.MAX_ERROR_CHARS else "...\n" + text[-(P.MAX_ERROR_CHARS - 4):]
