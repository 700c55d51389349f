"""cffi builder (out-of-line API mode) for ``spank_plugin._faas_core``.

The C core lives in ``csrc/faas_core.h`` (its API) and the files of its
concerns, ``csrc/faas_core.c`` and ``csrc/core_*.c``: the very files linked
into the SPANK plugin. This builder only reads the header for the cdef and
compiles the sources (both through spank_plugin/_csrc.py). It is wired into
packaging once, by ``cffi_modules`` in setup.py. For a development build
without pip::

    python3 spank_plugin/_build_core.py      # writes spank_plugin/_faas_core*.so
"""
from __future__ import annotations

import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # cffi executes this file, outside any package, while setup.py runs
    sys.path.insert(0, str(HERE.parent))

from spank_plugin import _csrc  # noqa: E402

HEADER = _csrc.CSRC / "faas_core.h"
SOURCES = _csrc.sources(_csrc.CORE_SOURCES)

ffibuilder = FFI()
ffibuilder.cdef(_csrc.cdef_from_header(HEADER.read_text()))
ffibuilder.set_source(
    "spank_plugin._faas_core",
    '#include "faas_core.h"\n',
    sources=[str(p) for p in SOURCES],
    include_dirs=[str(_csrc.CSRC)],
    extra_compile_args=_csrc.CFFI_CFLAGS,
    extra_link_args=_csrc.CFFI_LDFLAGS,
)


def build_inplace(tmpdir: Path = HERE.parent / "build" / "cffi") -> Path:
    """Compile under build/cffi and copy the module next to this file."""
    return _csrc.build_inplace(ffibuilder, HERE, tmpdir)


if __name__ == "__main__":
    print(build_inplace())
