"""Native (C) functions without a fabric: the entrypoint form, loading, the call contract
of csrc/faas_native.h and its typed errors, through the binding (cffi) and through ctypes
(the fallback where the binding is absent), and the JSON check of results."""
from __future__ import annotations

import hashlib
import json

import pytest

from faas_runtime import fabric, native
from faas_runtime.native import NativeFunction, NativeFunctionError, NativeLoadError, is_native_entrypoint
from tests.conftest import missing
from tests.functions import native_build

BACKENDS = ["cffi", "ctypes"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cffi" and not fabric.available():
        missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")
    return request.param


def test_entrypoint_forms():
    assert is_native_entrypoint("libecho.so:echo") and is_native_entrypoint("lib/libm.so.6:cos")
    assert not is_native_entrypoint("module:function") and not is_native_entrypoint("pkg.so_what:fn")
    assert not is_native_entrypoint("libecho.so")


def test_calls_are_byte_exact(native_dir, backend):
    echo = NativeFunction(f"{native_build.LIBRARY}:echo", str(native_dir), backend=backend)
    digest = NativeFunction(f"{native_build.LIBRARY}:digest", str(native_dir), backend=backend)
    try:
        assert echo.backend == backend
        for n in (0, 1, 64, 65536, 65537, 3 << 20):  # above the first 64 KiB of room: called again
            data = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
            assert echo(data) == data
            assert json.loads(digest(data)) == {"len": n, "fnv1a": native_build.fnv1a(data)}
        assert echo(memoryview(b"abc")) == b"abc"
    finally:
        echo.close()
        digest.close()


@pytest.mark.parametrize("symbol, text", [
    ("fail", "libnative_fns.so:fail returned 3: bad input (from C)"),
    ("liar", "returned -1: claimed a 65537-byte result, more than the room it was given (out_cap)"),
    ("greedy", "returned 1: still too small"),
])
def test_failures_are_typed_errors(native_dir, backend, symbol, text):
    fn = NativeFunction(f"{native_build.LIBRARY}:{symbol}", str(native_dir), backend=backend)
    for _ in range(2):  # and the function stays usable
        with pytest.raises(NativeFunctionError) as info:
            fn(b"1")
        assert text in str(info.value)
    fn.close()


@pytest.mark.parametrize("entrypoint, text", [
    ("libnative_fns.so:no_such_symbol", "has no symbol 'no_such_symbol'"),
    ("libmissing.so:echo", "native library 'libmissing.so' not found in the code dir"),
    ("../libnative_fns.so:echo", "lies outside the code dir"),
    ("libnative_fns.so:not-c", "must be 'path/to/lib.so:symbol'"),
    ("/usr/lib/libc.so:puts", "must be relative to the code dir"),
])
def test_load_errors_say_what_is_wrong(native_dir, backend, entrypoint, text):
    with pytest.raises(NativeLoadError, match=None) as info:
        NativeFunction(entrypoint, str(native_dir), backend=backend)
    assert text in str(info.value)


def test_a_library_that_is_not_a_shared_object(tmp_path, backend):
    (tmp_path / "libbad.so").write_bytes(b"not an ELF file")
    with pytest.raises(NativeLoadError, match="cannot load the library"):
        NativeFunction("libbad.so:echo", str(tmp_path), backend=backend)


def test_json_check():
    for good in (b"null", b" [1, 2.5e3, \"\\u00e9\"] ", "\"é\"".encode(), b"{\"a\": NaN}"):
        assert native.json_valid(good), good
    for bad in (b"", b"[1,]", b"\"\xff\"", b"01", b"1 2", hashlib.sha256(b"x").digest()):
        assert not native.json_valid(bad), bad
