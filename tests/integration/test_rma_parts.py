"""RMA calls in parts (issue 14): large parts of a request or a result are sent gathered
(registered where they lie, read by the other side into memory of its own); parts too small
for that are copied once into place (inline, or the reused bulk buffers), and a large result
can come back as a view of the client's receive buffer. Byte-exact over tcp and shm, across sizes that grow those buffers, with no
registration left behind; and the Python API's call format end to end on that path."""
from __future__ import annotations

import os

import pytest

from faas_runtime import fabric, pyapi
from faas_runtime.rma import gather
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
            assert (b"".join(view) if type(view) is list else bytes(view)) == data, n
            if n >= 3 * gather.GATHER_MIN:  # thirds this large come gathered: each in memory of its own
                assert type(view) is list and [v.nbytes for v in view] == [n // 3, n // 3, n - 2 * (n // 3)]
                assert not any(v.readonly for v in view)
            elif n > client.slot_size:  # small parts, too many for the result buffer: a view of the receive buffer
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
            assert value.data == data * 2 and not memoryview(value.data).readonly  # its own, writable
            # large: the fresh memory the client read it into (gathered), small: a copy
            assert isinstance(value.data, memoryview if n >= gather.GATHER_MIN else bytearray)
            again = pyapi.decode_result(client.invoke(parts, view=True))
            assert value.data == again.data  # the first result did not change with the receive buffer


@pytest.mark.parametrize("parts_executor", ["trampoline"], indirect=True)
def test_several_buffers_small_and_large_in_one_call(provider, parts_executor):  # noqa: F811
    from faas_runtime.rma import RmaClient
    from tests.integration.rma_parts_fns import Blob, echo

    sizes = [5, 3 << 20, 100, gather.GATHER_MIN, gather.GATHER_MIN - 1, 1 << 20]  # inline and gathered, mixed
    before = fabric.registrations()
    with RmaClient(parts_executor.control, config(provider), timeout=TIMEOUT) as client:
        data = [bytearray(os.urandom(n)) for n in sizes]
        parts = pyapi.encode_call_parts(echo, ([Blob(d) for d in data],), {}, by_value=False)
        value = pyapi.decode_result(client.invoke(parts, view=True))
        assert [bytes(b.data) for b in value] == data
    assert fabric.registrations() == before


def _send_gathered(client, body: bytes):
    """A request with ``F_GATHER`` and ``body`` as its table and inline bytes, whatever they
    say (what a hostile client can write into its slot): the result, or the error raised."""
    from faas_runtime.rma.wire import F_GATHER, HEADER, HSIZE

    client._inv.seq = seq = (client._inv.seq + 1) & 0xFFFF
    imm = client._slot_bits | seq
    HEADER.pack_into(client._qview, 0, len(body), 0, 0, F_GATHER, seq)
    client._qview[HSIZE: HSIZE + len(body)] = body
    rc = client.lib.ff_call(client._h, client._req_h, 0, HSIZE + len(body), client.peer, client.ring_addr,
                            client.ring_key, imm, imm, client._ev, int(TIMEOUT * 1e6))
    client._raise_on(rc)
    return client._finish()


@pytest.mark.parametrize("parts_executor", ["thirds"], indirect=True)
def test_gathered_tables_that_lie_fail_the_call_and_the_executor_serves_on(provider, parts_executor):  # noqa: F811
    import struct

    from faas_runtime.rma import RemoteFunctionError, RmaClient

    entry = struct.Struct("<QQQQ").pack
    lies = {
        "more segments than bytes": struct.pack("<II", 1000, 0) + b"x" * 40,
        "inline bytes that do not add up": struct.pack("<II", 1, 0) + entry(10, 0, 0, 0) + b"abc",
        "an empty remote segment": struct.pack("<II", 1, 0) + entry(0, 4096, 1, 1),
        "a remote segment larger than memory": struct.pack("<II", 1, 0) + entry(1 << 50, 4096, 1, 1),
        "a truncated table": b"\x01\x00",
    }
    with RmaClient(parts_executor.control, config(provider), timeout=TIMEOUT) as client:
        for what, body in lies.items():
            with pytest.raises(RemoteFunctionError, match="BadGather|MemoryError") as info:
                _send_gathered(client, body)
            assert client.broken is None, what  # a typed error result, the lease still good
            assert bytes(client.invoke(b"still here")) == b"still here", (what, str(info.value))
        # a well-formed table with inline segments only: the message they make
        body = struct.pack("<II", 2, 0) + entry(3, 0, 0, 0) + entry(4, 0, 0, 0) + b"abc" + b"defg"
        assert bytes(_send_gathered(client, body)) == b"abcdefg"


@pytest.mark.parametrize("lie", ["a bad key", "a count that does not fit"])
def test_a_gathered_result_that_lies_loses_the_executor_with_a_typed_error(provider, monkeypatch, lie):  # noqa: F811
    """The client's side of a lying table: an executor (here one in this process whose
    gather.pack is made to lie) that describes its result wrongly costs the client that
    executor (ExecutorLost), never a wrong value or an untyped error."""
    import struct
    import threading

    from faas_runtime.rma import ExecutorLost, RmaClient, RmaExecutor

    real_pack = gather.pack

    def lying_pack(ep, parts, into, at, room):
        got = real_pack(ep, parts, into, at, room)
        if lie == "a bad key":
            struct.pack_into("<Q", into, at + 8 + 16, 0xDEAD0000)  # the first segment's key
        else:
            struct.pack_into("<I", into, at, 100_000)  # more segments than the body holds
        return got

    monkeypatch.setattr(gather, "pack", lying_pack)
    ex = RmaExecutor(lambda payload: [b"a" * 70_000, b"b" * 70_000], "tcp://127.0.0.1:0", config(provider))
    t = threading.Thread(target=ex.serve, daemon=True)
    t.start()
    try:
        with RmaClient(ex.control, config(provider), timeout=5.0) as c:
            with pytest.raises(ExecutorLost):
                c.invoke(b"x")
            assert c.broken is not None  # no further call trusts that executor
    finally:
        ex.stop()
        t.join(TIMEOUT)
        ex.close()
