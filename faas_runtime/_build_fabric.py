"""cffi builder (out-of-line API mode) for ``faas_runtime._fabric``.

The C lives in ``csrc/fabric.{h,c}``; this builder reads the header for the cdef
and compiles the source against Debian's ``libfabric-dev``. libfabric's data-path
calls (fi_writemsg, fi_cq_read, ...) are static inline functions of its headers,
so only a compiled (API-mode) binding can reach them.

The extension is optional: ``setup.py`` lists this builder in ``cffi_modules``
only when ``rdma/fabric.h`` is present (see :func:`available`), and the runtime
falls back to ZeroMQ alone without it. After installing libfabric-dev later::

    apt-get install -y --no-install-recommends libfabric-dev
    python3 -m faas_runtime._build_fabric      # writes faas_runtime/_fabric*.so
"""
from __future__ import annotations

import os
import re
import shutil
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
HEADER = CSRC / "fabric.h"
SOURCE = CSRC / "fabric.c"

CFLAGS = ["-O2", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"]
LDFLAGS = ["-Wl,-z,relro,-z,now"]
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


def cdef_from_header(text: str) -> str:
    """The header minus comments and preprocessor lines, plus the FF_* constants
    (cffi takes ``#define NAME <int>`` lines as integer constants)."""
    defines = re.findall(r"^#define\s+(FF_\w+)\s+(0x[0-9a-fA-F]+|\d+)", text, flags=re.M)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    lines += [f"#define {name} {value}" for name, value in defines]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text()))
ffibuilder.set_source(
    "faas_runtime._fabric",
    '#include "fabric.h"\n',
    sources=[str(SOURCE)],
    include_dirs=[str(CSRC)],
    libraries=["fabric", "dl", "pthread"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)


def build_inplace(tmpdir: Path = HERE.parent / "build" / "cffi-fabric") -> Path:
    """Compile under build/ and copy the module next to this file."""
    if not available():
        raise SystemExit(MISSING)
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), verbose=False))
    target = HERE / built.name
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(built, tmp)
    os.replace(tmp, target)  # never rewrite a loaded .so in place
    return target


if __name__ == "__main__":
    print(build_inplace())
