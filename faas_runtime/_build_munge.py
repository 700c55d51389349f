"""cffi builder (out-of-line API mode) for ``faas_runtime._munge``: libmunge.

The header is the system's (``/usr/include/munge.h`` from Debian's libmunge-dev), so
the cdef below declares only what :mod:`faas_runtime.munge` calls; enum values and
the integer types of ``uid_t``/``gid_t`` come from the compiler (``...``), never
from copies here. Wired into packaging by ``cffi_modules`` in setup.py. For a
development build without pip::

    python3 -m faas_runtime._build_munge      # writes faas_runtime/_munge*.so
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # cffi executes this file, outside any package, while setup.py runs
    sys.path.insert(0, str(HERE.parent))

from spank_plugin import _csrc  # noqa: E402  (the hardening flags and the in-place build, shared)

HEADER_DIRS = ("/usr/include", "/usr/local/include")
MISSING = ("libmunge headers (munge.h) not found: install the Debian package libmunge-dev "
           "(apt-get install --no-install-recommends libmunge-dev)")

CDEF = """
typedef int... uid_t;
typedef int... gid_t;
typedef struct munge_ctx *munge_ctx_t;
struct in_addr { uint32_t s_addr; ...; };

typedef enum munge_opt {
    MUNGE_OPT_TTL, MUNGE_OPT_ADDR4, MUNGE_OPT_SOCKET, ...
} munge_opt_t;

typedef enum munge_err {
    EMUNGE_SUCCESS, EMUNGE_SOCKET, EMUNGE_TIMEOUT, EMUNGE_BAD_CRED, EMUNGE_BAD_VERSION,
    EMUNGE_BAD_CIPHER, EMUNGE_BAD_MAC, EMUNGE_BAD_ZIP, EMUNGE_BAD_REALM,
    EMUNGE_CRED_INVALID, EMUNGE_CRED_EXPIRED, EMUNGE_CRED_REWOUND, EMUNGE_CRED_REPLAYED, ...
} munge_err_t;

munge_err_t munge_encode(char **cred, munge_ctx_t ctx, const void *buf, int len);
munge_err_t munge_decode(const char *cred, munge_ctx_t ctx, void **buf, int *len, uid_t *uid, gid_t *gid);
const char *munge_strerror(munge_err_t e);

munge_ctx_t munge_ctx_create(void);
void munge_ctx_destroy(munge_ctx_t ctx);
const char *munge_ctx_strerror(munge_ctx_t ctx);
munge_err_t munge_ctx_get(munge_ctx_t ctx, int opt, ...);
munge_err_t munge_ctx_set(munge_ctx_t ctx, int opt, ...);

void free(void *ptr);  /* what munge_encode and munge_decode allocate */
"""


def available() -> bool:
    """True when the libmunge development header is installed."""
    return any(os.path.exists(os.path.join(d, "munge.h")) for d in HEADER_DIRS)


if not available():
    raise SystemExit(MISSING)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "faas_runtime._munge",
    "#include <stdlib.h>\n#include <netinet/in.h>\n#include <munge.h>\n",
    libraries=["munge"],
    extra_compile_args=_csrc.CFFI_CFLAGS,
    extra_link_args=_csrc.CFFI_LDFLAGS,
)


def build_inplace(tmpdir: Path = HERE.parent / "build" / "cffi-munge") -> Path:
    """Compile under build/ and copy the module next to this file."""
    return _csrc.build_inplace(ffibuilder, HERE, tmpdir)


if __name__ == "__main__":
    print(build_inplace())
