"""RMA calls in parts (issue 14): a request given as parts is copied once into the client's
reused bulk buffer, a handler's result given as parts is copied once into place (inline, or
the slot's reused bulk buffer), and a large result can come back as a view of the client's
receive buffer. Byte-exact over tcp and shm, across sizes that grow those buffers, with no
registration left behind; and the Python API's call format end to end on that path."""
from __future__ import annotations

import os

import pytest

from faas_runtime import fabric, pyapi
from tests.integration.test_fabric_rma import HERE, TIMEOUT, Proc, config, provider  # noqa: F401 (fixture)

SIZES = [0, 5, 65400, 70_000, 1 << 20, 200, (3 << 20) + 1, 64]  # inline, bulk, growing, inline again


@pytest.fixture
def parts_executor(provider, tmp_path, request):  # noqa: F811
    proc = Proc(["faas_runtime.rma", "--entrypoint", f"rma_parts_fns:{request.param}", "--code", str(HERE)],
                provider, tmp_path)
    yield proc
    proc.stop()


@pytest.mark.parametrize("parts_executor", ["thirds"], indirect=True)
def test_requests_and_results_in_parts_are_byte_exact(provider, parts_executor):  # noqa: F811
    from faas_runtime.rma import RmaClient

    before = fabric.registrations()
    with RmaClient(parts_executor.control, config(provider), timeout=TIMEOUT) as client:
        for n in SIZES:
            data = os.urandom(n)
            parts = [data[: n // 2], memoryview(data)[n // 2:]]
            assert bytes(client.invoke(parts)) == data, n
            view = client.invoke(parts, view=True)
            assert bytes(view) == data, n
            if n > client.slot_size:  # a view of the receive buffer, not a copy
                assert isinstance(view, memoryview)
            assert bytes(client.invoke(data)) == data, n  # one buffer: registered in place, as before
    assert fabric.registrations() == before


@pytest.mark.parametrize("parts_executor", ["trampoline"], indirect=True)
def test_python_calls_with_large_buffers_over_rma(provider, parts_executor):  # noqa: F811
    from faas_runtime.rma import RmaClient
    from tests.integration.rma_parts_fns import Blob, double

    with RmaClient(parts_executor.control, config(provider), timeout=TIMEOUT) as client:
        for n in (10, 1 << 20, 100):
            data = bytearray(os.urandom(n))
            parts = pyapi.encode_call_parts(double, (Blob(data),), {}, by_value=False)
            assert len(parts) == 2 and parts[1].nbytes == n  # the buffer itself, not a copy
            value = pyapi.decode_result(client.invoke(parts, view=True))
            assert value.data == data * 2 and isinstance(value.data, bytearray)  # its own, writable
            again = pyapi.decode_result(client.invoke(parts, view=True))
            assert value.data == again.data  # the first result did not change with the receive buffer
