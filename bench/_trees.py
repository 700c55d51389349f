"""Another revision of this repository, run beside the current tree in one benchmark run
(before/after figures on the same machine at the same load).

``checkout(rev, dest)`` makes a detached git worktree (the main tree's checkout, index and
branches are untouched) with its compiled extensions: this tree's copied in when their C
sources are the same, built in the worktree when they differ (about a minute); it removes
the worktree afterwards. ``module_argv(module)`` runs a module of such a tree: PYTHONPATH names the tree,
and the editable install's finder is dropped so that nothing comes from this checkout.
``TreeCluster`` is a dev cluster whose co-scheduler and agents (hence their executors, which
import the agent's own faas_runtime) run another tree's code.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from coscheduler.tools.devcluster import DevCluster

REPO = Path(__file__).resolve().parent.parent
# Packages with compiled extensions (built by `make venv`, not in git).
_BUILT_IN = ("faas_runtime", "spank_plugin")
# What those extensions are built from: if it differs, the copies do not match the old tree.
_EXTENSION_SOURCES = ("csrc", "spank_plugin/_csrc.py", "spank_plugin/_build_core.py", "faas_runtime/_build_fabric.py",
                      "faas_runtime/_build_munge.py")
_BUILDERS = ("spank_plugin._build_core", "faas_runtime._build_munge", "faas_runtime._build_fabric")

OWN_TREE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in getattr(f, '__module__', '')]\n")


def module_argv(module: str) -> list[str]:
    """Python arguments that run ``module`` as ``-m`` would, from the tree on PYTHONPATH."""
    return ["-c", OWN_TREE + f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"]


def script_argv(path: Path) -> list[str]:
    """Python arguments that run the script ``path`` of such a tree."""
    return ["-c", OWN_TREE + f"import runpy, sys; sys.argv[0] = {str(path)!r}; "
                             f"runpy.run_path({str(path)!r}, run_name='__main__')"]


@contextmanager
def checkout(rev: str, dest: Path) -> Iterator[Optional[Path]]:
    """``rev`` checked out at ``dest`` (None, said on stdout, when it cannot be)."""
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(dest), rev],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"before: cannot check out {rev} ({out.stderr.strip() or 'not a git checkout?'})")
        yield None
        return
    try:
        for pkg in _BUILT_IN:
            for so in (REPO / pkg).glob("*.so"):
                shutil.copy2(so, dest / pkg / so.name)
        if subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", rev, "--", *_EXTENSION_SOURCES]).returncode:
            print(f"before: the C extensions' sources changed since {rev}: building {rev}'s")
            for builder in _BUILDERS:  # its own modules (their names take precedence over the copies' .abi3)
                subprocess.run([sys.executable, *module_argv(builder)], cwd=dest, env={**os.environ,
                               "PYTHONPATH": str(dest)}, check=True, capture_output=True)
        yield dest
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(dest)], capture_output=True)


class TreeCluster(DevCluster):
    """A dev cluster whose Python daemons run the code of ``tree``."""

    def __init__(self, root: Path, tree: Path, **options):
        super().__init__(root, **options)
        self.tree = tree

    def _slurm_env(self) -> dict[str, str]:
        return {**super()._slurm_env(), "PYTHONPATH": str(self.tree)}

    def _spawn_python(self, name: str, argv: list[str], **options) -> None:
        if argv[:1] == ["-m"]:
            argv = [*module_argv(argv[1]), *argv[2:]]
        super()._spawn_python(name, argv, **options)
