"""Reading fields of untrusted messages: every value typed and bounded, or a typed error.

Every number, string, list and path that a client or an agent sends passes through one
of these before it reaches the database or a decision, so that no value is too large for
a column (SQLite's and PostgreSQL's integers are 64-bit), queues forever (a timeout of
1e300, a million cores), or names something it may not (a relative or NUL-bearing path).
The bounds are documented in docs/security.md.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

from faas_runtime import protocol as P

from .hub import RequestFailed

INT64_MAX = 2**63 - 1
MAX_CORES = 4096  # per function invocation
MAX_MEM_MB = 64 << 20  # 64 TiB
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_ATTEMPTS = 100
MAX_PATH = 4096
MAX_ENTRYPOINT = 512
MAX_NODE_NAME = 255
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000  # users may ask up to config's user ceiling
MAX_IDS = 100_000  # ids in one listing or report
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-\[\]]{0,254}")
# module.path:callable, or a relative path to a shared library inside the code directory
# (path/lib.so:symbol): never absolute, never leaving the code directory.
ENTRYPOINT_RE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
                           r"|(?!/)(?:[A-Za-z0-9_.+-]+/)*[A-Za-z0-9_.+-]+\.so(?:\.[0-9]+)*)"
                           r":[A-Za-z_][A-Za-z0-9_.]*")


def invalid(message: str) -> RequestFailed:
    return RequestFailed(P.E_INVALID, message)


def whole(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (a bool or a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
            value = int(value)
        else:
            raise invalid(f"{name} must be a whole number, not {_show(value)}")
    if not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def number(value: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value) if isinstance(value, str) and len(value) < 40 else None
        except ValueError:
            value = None
        if value is None:
            raise invalid(f"{name} must be a number, not {_show(value)}")
    value = float(value)
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
        raise invalid(f"{name} must be {low} and at most {hi:g}")
    return value


def text(value: Any, name: str, max_len: int, pattern: Optional[re.Pattern] = None) -> str:
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string, not {_show(value)}")
    if len(value) > max_len or "\x00" in value:
        raise invalid(f"{name} must be at most {max_len} characters, without NUL")
    if pattern is not None and not pattern.fullmatch(value):
        raise invalid(f"bad {name} {value[:120]!r}")
    return value


def absolute_path(value: Any, name: str) -> str:
    """An absolute, normalised path (no ``..``, no NUL): where a node finds code or an image."""
    path = text(value, name, MAX_PATH)
    if not path.startswith("/"):
        raise invalid(f"{name} must be an absolute path, not {path[:120]!r}")
    if os.path.normpath(path) != path.rstrip("/") and path != "/":
        raise invalid(f"{name} must be a normalised path (no '..', '//' or '.'), not {path[:120]!r}")
    return path.rstrip("/") or "/"


def ids(value: Any, name: str = "ids", max_count: int = MAX_IDS) -> list[int]:
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list of invocation ids")
    if len(value) > max_count:
        raise RequestFailed(P.E_TOO_LARGE, f"{name}: at most {max_count} at once, not {len(value)}")
    return [whole(v, "an invocation id", 1, INT64_MAX) for v in value]


def cpu_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > MAX_CORES:
        raise invalid(f"{name} must be a non-empty list of at most {MAX_CORES} CPU numbers")
    return [whole(c, f"a CPU of {name}", 0, 1 << 20) for c in value]


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
