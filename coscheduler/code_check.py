"""Register's check that a function's owner can read its code, done as the owner.

The co-scheduler (root on the head node) never tells a user whether a path exists or is
readable by root: the look happens in a child that dropped to the user
(faas_runtime.as_user). ``module.sub:fn`` must be ``module/sub.py``, a package
``module/sub/`` or ``module/sub/__init__.py`` in the code directory; ``path/lib.so:sym``
must be that file. Where the co-scheduler is not root it cannot act as the user, and the
executor's own start (as the user) is the check.

May not touch: any path as root.
"""
from __future__ import annotations

import os
from typing import Optional

from faas_runtime import as_user
from faas_runtime.pyapi import ENTRYPOINT as PYAPI_ENTRYPOINT

# Entrypoints the executor brings itself (faas_runtime is on every executor's path): only
# the code directory is the user's to check.
BUILTIN_ENTRYPOINTS = frozenset({PYAPI_ENTRYPOINT})


def can_check() -> bool:
    return as_user.can_switch()


def code_problem(uid: int, code_dir: str, entrypoint: str) -> Optional[str]:
    """Why ``uid`` could not run ``entrypoint`` from ``code_dir``, or None if it can."""
    target = entrypoint.rpartition(":")[0]
    if entrypoint in BUILTIN_ENTRYPOINTS:
        what, candidates = "", []
    elif target.endswith(".so") or ".so." in target:
        what, candidates = f"the library {target}", [target]
    else:
        base = target.replace(".", "/")
        what, candidates = f"the module {target}", [f"{base}.py", f"{base}/__init__.py", base]
    try:
        return as_user.call_as(uid, _look, code_dir, what, candidates)
    except as_user.NoSuchUser as exc:
        return f"{exc} (the co-scheduler's host)"


def _look(code_dir: str, what: str, candidates: list[str]) -> None:
    """(as the user) Raise with the reason the code cannot be read."""
    if not os.path.isdir(code_dir) or not os.access(code_dir, os.X_OK):
        raise LookupError(f"the code directory {code_dir} does not exist or is not a directory you can enter")
    if not os.access(code_dir, os.R_OK):
        raise LookupError(f"the code directory {code_dir} is not readable by you")
    if not candidates:
        return
    for rel in candidates:
        path = os.path.join(code_dir, rel)
        if os.path.exists(path):
            if not os.access(path, os.R_OK):
                raise LookupError(f"{what} in the code directory {code_dir} is not readable by you")
            return
    raise LookupError(f"{what} is not in the code directory {code_dir} (looked for {', '.join(candidates)})")
