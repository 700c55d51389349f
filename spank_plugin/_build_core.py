"""cffi builder (out-of-line API mode) for ``spank_plugin._faas_core``.

The C core lives in ``csrc/faas_core.{h,c}``, the very files linked into the
SPANK plugin; this builder only reads the header for the cdef and compiles the
source. It is wired into packaging once, by ``cffi_modules`` in setup.py. For a
development build without pip::

    python3 spank_plugin/_build_core.py      # writes spank_plugin/_faas_core*.so
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
HEADER = CSRC / "faas_core.h"
SOURCE = CSRC / "faas_core.c"

# Same hardening as the plugin (spank_plugin/plugin_build.py); no -Werror here
# because the cffi-generated wrapper is not ours to keep warning-free.
CFLAGS = ["-O2", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"]
LDFLAGS = ["-Wl,-z,relro,-z,now"]


def cdef_from_header(text: str) -> str:
    """The header minus what cffi's cdef does not take: comments and the
    preprocessor lines of the include guard."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text()))
ffibuilder.set_source(
    "spank_plugin._faas_core",
    '#include "faas_core.h"\n',
    # Absolute, resolved from this file: cffi's own compile() changes into
    # its tmpdir, and setuptools accepts absolute sources as well.
    sources=[str(SOURCE)],
    include_dirs=[str(CSRC)],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)



def build_inplace(tmpdir: Path = HERE.parent / "build" / "cffi") -> Path:
    """Compile under build/cffi and copy the module next to this file, where
    ``import spank_plugin._faas_core`` finds it (what ``pip install -e .``
    does through setup.py)."""
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), verbose=False))
    target = HERE / built.name
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(built, tmp)
    os.replace(tmp, target)  # never rewrite a loaded .so in place
    return target


if __name__ == "__main__":
    print(build_inplace())
