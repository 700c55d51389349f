"""How a Python callable reaches the nodes, and the function registered to run it.

A callable goes **by reference** (its module and name: the node imports it) when its
module is a file outside the Python installation: the module's root directory (the one
its top-level package sits in) becomes the code directory, which the nodes must see (a
shared filesystem). It goes **by value** (cloudpickle) when it has no importable home:
``__main__``, a notebook, a lambda, a closure. Callables of the Python installation
itself (``math.sqrt``, ``numpy.sum``) go by reference with the default code directory.

Each set of resources is one registered function (``pyapi-<hash>``), with the entrypoint
``faas_runtime.pyapi:call``; it is registered on first use, and updated (so that warm
executors that imported older code retire) when the module file changed since.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from faas_runtime.pyapi import ENTRYPOINT
from faas_runtime.queue_client import Client, RequestError

RESOURCE_OPTIONS = ("cores", "mem", "timeout", "container", "runtime", "max_attempts", "priority", "code_dir")
_MEM_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_MEM_UNITS = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def mem_mb(value: Any) -> int:
    """Memory as MiB: a number (MiB) or text such as ``512M``, ``4G``, ``4GiB``."""
    if isinstance(value, bool):
        raise ValueError(f"mem must be MiB or text like '4G', not {value!r}")
    if isinstance(value, (int, float)):
        return max(1, int(value))
    m = _MEM_RE.fullmatch(str(value))
    if not m:
        raise ValueError(f"mem must be MiB or text like '512M' or '4G', not {value!r}")
    return max(1, int(float(m.group(1)) * _MEM_UNITS[m.group(2).upper()]))


@dataclass(frozen=True)
class Resources:
    """What one call needs: the executor's options, overridden per ``submit``."""

    cores: int = 1
    mem_mb: int = 256
    timeout_s: float = 60.0
    container: Optional[str] = None  # an image (docs/runtime.md)
    runtime: Optional[str] = None  # its runtime (default: the site's)
    max_attempts: int = 3
    priority: int = 0  # of each invocation, not of the function
    code_dir: Optional[str] = None  # default: where the callable's module lives

    def with_options(self, options: dict[str, Any]) -> "Resources":
        unknown = set(options) - set(RESOURCE_OPTIONS)
        if unknown:
            raise TypeError(f"unknown option {sorted(unknown)[0]!r} (options: {', '.join(RESOURCE_OPTIONS)})")
        changes: dict[str, Any] = {}
        for key, value in options.items():
            if key == "mem":
                changes["mem_mb"] = mem_mb(value)
            elif key == "timeout":
                changes["timeout_s"] = float(value)
            elif key == "code_dir":
                changes["code_dir"] = None if value is None else os.path.abspath(value)
            elif key in ("container",):
                changes[key] = None if value is None else os.path.abspath(value)
            else:
                changes[key] = value
        return replace(self, **changes)


@dataclass(frozen=True)
class Shipping:
    """How a callable travels: ``by_value``, the code directory, the module file (if any)."""

    by_value: bool
    code_dir: str
    module_file: Optional[str] = None


def default_code_dir() -> str:
    """The directory of the script that runs (``__main__``), else the working directory."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.dirname(os.path.abspath(main_file)) if main_file else os.getcwd()


def _installed(path: str) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(os.path.join(os.path.realpath(r), "")) for r in roots if r)


def shipping(fn: Callable, code_dir: Optional[str] = None) -> Shipping:
    """By reference or by value, and from which code directory (``code_dir`` overrides)."""
    name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(name or "")
    default = code_dir or default_code_dir()
    if module is None or name == "__main__" or "<" in qualname:  # __main__, lambdas, closures
        return Shipping(True, default)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not fn:
        return Shipping(True, default)  # its name does not lead back to it
    path = getattr(module, "__file__", None)
    if not path:
        return Shipping(False, default)  # a built-in module: every Python has it
    path = os.path.realpath(path)
    if _installed(path):
        return Shipping(False, default)
    depth = name.count(".") + (1 if Path(path).name == "__init__.py" else 0)
    root = Path(path).parent
    for _ in range(depth):
        root = root.parent
    return Shipping(False, code_dir or str(root), path)


def function_spec(res: Resources, code_dir: str) -> dict[str, Any]:
    """The registered function for these resources and code directory."""
    spec = {"entrypoint": ENTRYPOINT, "code_dir": code_dir, "cores": res.cores, "mem_mb": res.mem_mb,
            "timeout_s": res.timeout_s, "max_attempts": res.max_attempts, "image": res.container,
            "runtime": res.runtime}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": f"pyapi-{digest}", **spec}


def ensure_registered(client: Client, spec: dict[str, Any], module_file: Optional[str] = None) -> str:
    """Register ``spec`` unless it is; update it when ``module_file`` changed since (warm
    executors holding the old import retire). Its name."""
    try:
        shown = client.function(spec["name"])
    except RequestError as exc:
        if exc.code != "not-found":
            raise
        client.register(**spec)
        return spec["name"]
    if module_file is not None:
        import datetime as dt

        changed = dt.datetime.fromisoformat(shown.get("updated_at") or shown["created_at"]).timestamp()
        if os.stat(module_file).st_mtime > changed:
            client.update(spec["name"], code_dir=spec["code_dir"])
    return spec["name"]

