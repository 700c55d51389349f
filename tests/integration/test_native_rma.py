"""Native (C) functions on the RMA hot path (csrc/faas_native.h), two processes over the
tcp and shm providers: the stand-alone RMA executor (``python -m faas_runtime.rma
--entrypoint libnative_fns.so:<symbol>``, raw bytes in and out) answers from its C
completion loop; byte-exact results and checksums, results larger than the client's
buffer, failing functions as typed errors with the executor serving on; and, in one
process, that the C loop answers without calling Python. The same functions through the
real warm executor (JSON in and out, ZeroMQ and RMA leases, cold runs) are in
test_hot_rma.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from faas_runtime import fabric
from faas_runtime.native import NativeFunction
from tests.conftest import missing
from tests.functions import native_build

from .test_fabric_rma import TIMEOUT, Proc, config, provider  # noqa: F401  (fixture)

LIB = native_build.LIBRARY

if not fabric.available():
    missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")


def native_executor(symbol: str, provider: str, native_dir, tmp_path) -> Proc:
    return Proc(["faas_runtime.rma", "--entrypoint", f"{LIB}:{symbol}", "--code", str(native_dir)], provider, tmp_path)


SIZES = [0, 1, 63, 64, 4096, 65504, 65505, 1 << 20, (1 << 20) + 7, 16 << 20]


def test_native_echo_and_digest_are_byte_exact(provider, native_dir, tmp_path):
    from faas_runtime.rma import RmaClient

    echo = native_executor("echo", provider, native_dir, tmp_path)
    digest = native_executor("digest", provider, native_dir, tmp_path)
    before = fabric.registrations()
    try:
        with RmaClient(echo.control, config(provider), timeout=TIMEOUT) as e, \
                RmaClient(digest.control, config(provider), timeout=TIMEOUT) as d:
            for n in SIZES:  # inline (the C loop), a bulk payload and a bulk result (Python's part)
                payload = os.urandom(n)
                out = e.invoke(payload)
                assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest(), n
                assert json.loads(d.invoke(payload)) == {"len": n, "fnv1a": native_build.fnv1a(payload)}, n
            for i in range(500):  # many calls on the C path, each its own payload
                payload = f"call {i} ".encode() * (1 + i % 50)
                assert e.invoke(payload) == payload
    finally:
        echo.stop()
        digest.stop()
    assert fabric.registrations() == before


def test_results_larger_than_the_client_buffer(provider, native_dir, tmp_path):
    """repeat N returns N+2 bytes: above the client's buffer the C loop hands the call to
    Python (FAAS_NATIVE_TOO_SMALL), which gives room and stages the result for a read."""
    from faas_runtime.rma import RmaClient

    proc = native_executor("repeat", provider, native_dir, tmp_path)
    try:
        with RmaClient(proc.control, config(provider), timeout=TIMEOUT) as c:
            for n in (10, 70_000, 5, 3 << 20, 65_000, 0):
                assert c.invoke(str(n).encode()) == b'"' + b"x" * n + b'"', n
    finally:
        proc.stop()


@pytest.mark.parametrize("symbol, text", [
    ("fail", f"NativeFunctionError: {LIB}:fail returned 3: bad input (from C)"),
    ("liar", f"NativeFunctionError: {LIB}:liar returned -1: claimed a "),
    ("greedy", f"NativeFunctionError: {LIB}:greedy returned 1: still too small"),
])
def test_failing_native_functions_are_typed_errors(provider, native_dir, tmp_path, symbol, text):
    from faas_runtime.rma import RemoteFunctionError, RmaClient

    proc = native_executor(symbol, provider, native_dir, tmp_path)
    try:
        with RmaClient(proc.control, config(provider), timeout=TIMEOUT) as c:
            for payload in (b"1", b"2", b"x" * 100_000):  # inline, again, and a bulk payload
                with pytest.raises(RemoteFunctionError) as info:
                    c.invoke(payload)
                assert str(info.value).startswith(text), str(info.value)
        assert proc.p.poll() is None  # the executor serves on
    finally:
        proc.stop()


def test_missing_library_or_symbol_stops_the_executor_with_the_reason(provider, native_dir, tmp_path):
    for entrypoint, text in ((f"{LIB}:nope", "has no symbol 'nope'"), ("libnope.so:echo", "not found")):
        with pytest.raises(RuntimeError) as info:
            Proc(["faas_runtime.rma", "--entrypoint", entrypoint, "--code", str(native_dir)], provider, tmp_path)
        assert "NativeLoadError" in str(info.value) and text in str(info.value)


def test_the_c_loop_answers_without_python(provider, native_dir):
    """In one process: a NativeHandler whose Python side counts its calls; inline calls
    never reach it; a bulk payload does, and so does the next call of its slot (Python
    releases the staged bulk result first); then C again."""
    from faas_runtime.rma import NativeHandler, RmaClient, RmaExecutor

    class Counting(NativeHandler):
        calls = 0

        def __call__(self, payload):
            Counting.calls += 1
            return super().__call__(payload)

    native = NativeFunction(f"{LIB}:echo", str(native_dir))
    ex = RmaExecutor(Counting(native), "tcp://127.0.0.1:0", config(provider))
    assert ex.native_fast_path
    t = threading.Thread(target=ex.serve, daemon=True)
    t.start()
    try:
        with RmaClient(ex.control, config(provider), timeout=TIMEOUT) as c:
            for i in range(200):
                assert c.invoke(b"%d" % i) == b"%d" % i
            assert Counting.calls == 0
            big = os.urandom(100_000)
            assert c.invoke(big) == big
            assert Counting.calls == 1
            assert c.invoke(b"again") == b"again" and Counting.calls == 2
            for i in range(100):
                assert c.invoke(b"%d" % i) == b"%d" % i
            assert Counting.calls == 2
        ex.stop()
        t.join(TIMEOUT)
        assert ex.served == 302
    finally:
        ex.stop()
        t.join(TIMEOUT)
        ex.close()
        native.close()


def test_python_handlers_are_called_by_the_c_loop_once_a_request(provider):
    """A Python handler is called from the C loop (ff_py_call): its small results go out
    from there; a result too large for the client's buffer, or an exception, is handed to
    Python's loop with the outcome, so the handler never runs twice for one request."""
    from faas_runtime.rma import RemoteFunctionError, RmaClient, RmaExecutor

    calls = []

    def handler(payload):
        calls.append(bytes(payload))
        if bytes(payload) == b"boom":
            raise ValueError("boom")
        if bytes(payload) == b"big":
            return [b"a" * 70_000, b"b" * 70_000]  # above the 64 KiB result buffer: gathered
        if bytes(payload) == b"none":
            return None
        return [b"<", payload, b">"]

    ex = RmaExecutor(handler, "tcp://127.0.0.1:0", config(provider))
    assert not ex.native_fast_path  # Python runs, but in the C loop
    t = threading.Thread(target=ex.serve, daemon=True)
    t.start()
    try:
        with RmaClient(ex.control, config(provider), timeout=TIMEOUT) as c:
            assert [bytes(c.invoke(b"%d" % i)) for i in range(50)] == [b"<%d>" % i for i in range(50)]
            assert bytes(c.invoke(b"big")) == b"a" * 70_000 + b"b" * 70_000
            with pytest.raises(RemoteFunctionError, match="ValueError: boom"):
                c.invoke(b"boom")
            assert bytes(c.invoke(b"none")) == b"" and bytes(c.invoke(b"x")) == b"<x>"
        assert calls == [b"%d" % i for i in range(50)] + [b"big", b"boom", b"none", b"x"]  # each once
    finally:
        ex.stop()
        t.join(TIMEOUT)
        ex.close()


@pytest.mark.parametrize("kind", ["python", "native"])
def test_end_reaches_requests_in_the_c_loop_and_in_python(provider, native_dir, kind):
    """RmaExecutor.end (from another thread, as the executor's main thread calls it) makes
    the next request of that lease's slots fail with the "ended" flag, in both loops."""
    from faas_runtime.rma import NativeHandler, RmaClient, RmaExecutor, RmaLeaseEnded
    from faas_runtime.rma.testing import echo

    native = NativeFunction(f"{LIB}:echo", str(native_dir)) if kind == "native" else None
    ex = RmaExecutor(NativeHandler(native) if native else echo, "tcp://127.0.0.1:0", config(provider),
                     authorize=lambda msg: msg.get("token"))
    assert ex.native_fast_path == (kind == "native")
    t = threading.Thread(target=ex.serve, daemon=True)
    t.start()
    try:
        with RmaClient(ex.control, config(provider), timeout=TIMEOUT, attach={"token": "a"}) as a, \
                RmaClient(ex.control, config(provider), timeout=TIMEOUT, attach={"token": "b"}) as b:
            for i in range(50):
                assert bytes(a.invoke(b"%d" % i)) == b"%d" % i and bytes(b.invoke(b"x")) == b"x"
            ex.end("a", "lease a is over")
            with pytest.raises(RmaLeaseEnded, match="lease a is over"):
                a.invoke(b"late")
            assert bytes(b.invoke(b"still")) == b"still"  # other leases carry on
    finally:
        ex.stop()
        t.join(TIMEOUT)
        ex.close()
        if native:
            native.close()
