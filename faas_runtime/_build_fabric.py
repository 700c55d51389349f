"""cffi builder (out-of-line API mode) for ``faas_runtime._fabric``.

The C lives in ``csrc/fabric.h`` (its API) and ``csrc/fabric_*.c`` (one file
per concern); this builder reads the header for the cdef and compiles the
sources (both through spank_plugin/_csrc.py) against Debian's
``libfabric-dev``. libfabric's data-path calls (fi_writemsg, fi_cq_read, ...)
are static inline functions of its headers, so only a compiled (API-mode)
binding can reach them.

The extension is optional: ``setup.py`` lists this builder in ``cffi_modules``
only when ``rdma/fabric.h`` is present (see :func:`available`), and the runtime
falls back to ZeroMQ alone without it. After installing libfabric-dev later::

    apt-get install -y --no-install-recommends libfabric-dev
    python3 -m faas_runtime._build_fabric      # writes faas_runtime/_fabric*.so
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # cffi executes this file, outside any package, while setup.py runs
    sys.path.insert(0, str(HERE.parent))

from spank_plugin import _csrc  # noqa: E402
from spank_plugin._csrc import cdef_from_header  # noqa: E402  (the tests read the cdef through this module)

HEADER = _csrc.CSRC / "fabric.h"
SOURCES = _csrc.sources(_csrc.FABRIC_SOURCES)
MISSING = ("libfabric headers (rdma/fabric.h) not found: install the Debian package libfabric-dev "
           "(apt-get install --no-install-recommends libfabric-dev)")


def include_dirs() -> list[str]:
    extra = os.environ.get("FAAS_LIBFABRIC_INCLUDE")
    dirs = [extra] if extra else []
    return dirs + ["/usr/include", "/usr/local/include",
                   "/usr/include/" + (sysconfig.get_config_var("MULTIARCH") or "")]


def available() -> bool:
    """True when the libfabric development headers are installed."""
    return any(os.path.exists(os.path.join(d, "rdma", "fabric.h")) for d in include_dirs() if d)


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text()))
# The C loop's call into a Python handler (faas_runtime.rma.server registers it; csrc/fabric_internal.h)
ffibuilder.cdef('extern "Python+C" int ff_py_call(void *, const void *, uint64_t, void *, uint64_t, uint64_t *);')
ffibuilder.set_source(
    "faas_runtime._fabric",
    '#include "fabric.h"\n',
    sources=[str(p) for p in SOURCES],
    include_dirs=[str(_csrc.CSRC)],
    libraries=["fabric", "dl", "pthread"],
    extra_compile_args=_csrc.CFFI_CFLAGS,
    extra_link_args=_csrc.CFFI_LDFLAGS,
)


def build_inplace(tmpdir: Path = HERE.parent / "build" / "cffi-fabric") -> Path:
    """Compile under build/ and copy the module next to this file."""
    if not available():
        raise SystemExit(MISSING)
    return _csrc.build_inplace(ffibuilder, HERE, tmpdir)


if __name__ == "__main__":
    print(build_inplace())
