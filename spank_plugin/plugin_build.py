"""Build the SPANK plugin (spank_faas.so) against this machine's Slurm headers.

Used by ``faas-admin install-plugin`` and by the tests. The plugin must be
compiled against the headers of the Slurm that loads it (Slurm refuses a
plugin whose plugin_version differs from its own), so it is built on the
target machine rather than shipped as a binary.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from spank_plugin._csrc import HARDENING, LINK_HARDENING, PLUGIN_SOURCES, sources

__all__ = [
    "PluginBuildError",
    "PLUGIN_NAME",
    "CFLAGS",
    "find_csrc",
    "find_compiler",
    "slurm_header_version",
    "build_plugin",
    "plugstack_line",
]

PLUGIN_NAME = "spank_faas.so"
VERSION_SCRIPT = "spank_faas.lds"

CFLAGS = (
    "-shared",
    "-fPIC",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    *HARDENING,
    *LINK_HARDENING,
)

_LIBSLURM_HINT = "install the Debian package libslurm-dev (apt-get install libslurm-dev)"
_GCC_HINT = "install gcc (apt-get install gcc)"


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here; the message says what to install or fix."""


def find_csrc() -> Path:
    """The C sources: csrc/ of a repository checkout, else the copy that
    setup.py installs under <prefix>/share/slurm-faas/csrc."""
    candidates = [
        Path(__file__).resolve().parent.parent / "csrc",
        Path(sys.prefix) / "share" / "slurm-faas" / "csrc",
        Path(sys.base_prefix) / "share" / "slurm-faas" / "csrc",
    ]
    for cand in candidates:
        if all((cand / name).is_file() for name in ("faas_core.h", VERSION_SCRIPT)) and \
                all(any(cand.glob(pattern)) for pattern in PLUGIN_SOURCES):
            return cand
    raise PluginBuildError(
        "cannot find the plugin's C sources (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall slurm-faas"
    )


def find_compiler(cc: Optional[str] = None) -> str:
    """cc (or $CC, or cc, or gcc) as an absolute path."""
    names = [cc] if cc else [os.environ.get("CC") or "", "cc", "gcc"]
    for name in names:
        if name:
            path = shutil.which(name)
            if path:
                return path
    raise PluginBuildError(f"no C compiler found ({', '.join(n for n in names if n)}): {_GCC_HINT}")


def _preprocess(cc: str, source: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cc, "-E", "-P", "-x", "c", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )


def _check_slurm_headers(cc: str) -> None:
    proc = _preprocess(cc, "#include <slurm/spank.h>\n")
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise PluginBuildError(
            "<slurm/spank.h> not found"
            + (f" ({detail[0]})" if detail else "")
            + f": {_LIBSLURM_HINT}"
        )


def slurm_header_version(cc: Optional[str] = None) -> str:
    """The Slurm version of the installed headers, e.g. "22.05.8" (from
    SLURM_VERSION_NUMBER in <slurm/slurm_version.h>)."""
    compiler = find_compiler(cc)
    proc = _preprocess(compiler, "#include <slurm/slurm_version.h>\nSLURM_VERSION_NUMBER\n")
    if proc.returncode != 0:
        raise PluginBuildError(f"<slurm/slurm_version.h> not found: {_LIBSLURM_HINT}")
    token = proc.stdout.strip().splitlines()[-1].strip()
    try:
        number = int(token, 0)
    except ValueError:
        raise PluginBuildError(f"cannot read SLURM_VERSION_NUMBER (got {token!r})") from None
    return f"{(number >> 16) & 0xFF}.{(number >> 8) & 0xFF:02d}.{number & 0xFF}"


def build_plugin(out_dir: Path, *, cc: Optional[str] = None, csrc: Optional[Path] = None) -> Path:
    """Compile the core and the plugin (spank_plugin._csrc.PLUGIN_SOURCES: csrc/faas_core.c,
    csrc/core_*.c, csrc/spank_*.c) into out_dir/spank_faas.so (hardened, only the SPANK
    symbols exported) and return its path.

    The result is written under a temporary name and renamed into place: a
    slurmstepd that has the old plugin mapped keeps running on it, where
    rewriting the file in place could crash it.
    """
    compiler = find_compiler(cc)
    src = Path(csrc) if csrc else find_csrc()
    _check_slurm_headers(compiler)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PLUGIN_NAME
    fd, tmp_name = tempfile.mkstemp(prefix=f".{PLUGIN_NAME}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = [
        compiler,
        *CFLAGS,
        f"-Wl,--version-script={src / VERSION_SCRIPT}",
        f"-I{src}",
        *(str(path) for path in sources(PLUGIN_SOURCES, src)),
        "-o",
        str(tmp),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PluginBuildError(
                f"compiling {PLUGIN_NAME} failed (exit {proc.returncode}):\n"
                f"$ {' '.join(argv)}\n{proc.stderr.strip()}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def plugstack_line(so_path: os.PathLike | str, config_args: Sequence[str] = ()) -> str:
    """The plugstack.conf line that loads the plugin: ``optional <so> args...``.

    "optional" means a node where the plugin fails to load still runs jobs.
    Slurm splits the line on whitespace, so no part may contain any.
    """
    parts = [str(so_path), *config_args]
    for part in parts:
        if not part or any(ch.isspace() for ch in part):
            raise ValueError(f"plugstack.conf fields cannot be empty or contain whitespace: {part!r}")
    if not os.path.isabs(parts[0]):
        raise ValueError(f"the plugin path must be absolute: {parts[0]!r}")
    return " ".join(["optional", *parts])
