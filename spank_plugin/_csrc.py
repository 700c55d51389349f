"""The C sources in ``csrc/`` and how they are built, in one place.

Which files make which binary (name patterns, so that a new file of a concern
is built without touching a list), the hardening flags of every build, and what
the cffi builders share: a header turned into a cdef, and building a module in
place. Used by spank_plugin/plugin_build.py (the SPANK plugin) and by the cffi
builders: spank_plugin/_build_core.py, faas_runtime/_build_fabric.py and
faas_runtime/_build_munge.py.
cffi runs those builders from the source tree while setup.py runs (it executes
the file rather than importing it), so this module imports nothing of the
project and nothing beyond the standard library.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, List

CSRC = Path(__file__).resolve().parent.parent / "csrc"

# The C files of each binary: glob patterns inside csrc/.
CORE_SOURCES = ("faas_core.c", "core_*.c")      # the Slurm-free core, API faas_core.h
PLUGIN_SOURCES = CORE_SOURCES + ("spank_*.c",)  # spank_faas.so: the core + the SPANK plugin
FABRIC_SOURCES = ("fabric_*.c",)                # the libfabric RMA helpers, API fabric.h

HARDENING = ("-fstack-protector-strong", "-D_FORTIFY_SOURCE=2")
LINK_HARDENING = ("-Wl,-z,relro,-z,now",)
# The cffi modules get the plugin's hardening (spank_plugin/plugin_build.py) but
# no -Werror: the cffi-generated wrapper is not ours to keep warning-free.
CFFI_CFLAGS = ["-O2", "-Wall", "-Wextra", *HARDENING]
CFFI_LDFLAGS = list(LINK_HARDENING)


def sources(patterns: Iterable[str], csrc: Path = CSRC) -> List[Path]:
    """The files of csrc that the patterns name, in pattern order, each
    pattern's files sorted. Absolute, resolved: cffi's own compile() changes
    into its tmpdir, and setuptools accepts absolute sources as well."""
    found: List[Path] = []
    for pattern in patterns:
        found += [p for p in sorted(Path(csrc).resolve().glob(pattern)) if p not in found]
    return found


def cdef_from_header(text: str) -> str:
    """The header minus what cffi's cdef does not take (comments, the
    preprocessor lines of the include guard and the #includes), plus its
    ``#define NAME <integer>`` lines, which cffi takes as integer constants."""
    defines = re.findall(r"^#define[ \t]+(\w+)[ \t]+(0x[0-9a-fA-F]+|\d+)", text, flags=re.M)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    lines += [f"#define {name} {value}" for name, value in defines]
    return "\n".join(lines)


def build_inplace(ffibuilder: Any, package_dir: Path, tmpdir: Path) -> Path:
    """Compile ffibuilder under tmpdir and copy the module into package_dir,
    where the import finds it (what ``pip install -e .`` does through
    setup.py). Returns the module's path."""
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), verbose=False))
    target = Path(package_dir) / built.name
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(built, tmp)
    os.replace(tmp, target)  # never rewrite a loaded .so in place
    return target
