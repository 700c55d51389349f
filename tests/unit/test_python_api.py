"""The Python API (slurm_faas): the call format, how callables travel, binary payloads and
pushed results through the real co-scheduler loop in-process, with an agent played here
that runs the real trampoline (faas_runtime.pyapi). On the dev cluster, with real users:
tests/integration/test_python_api.py."""
from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import sys

import pytest

import slurm_faas
from faas_runtime import auth, pyapi
from faas_runtime import protocol as P
from faas_runtime.executor_values import call_payload, value_out
from slurm_faas.functions import Resources, function_spec, mem_mb, shipping
from tests.integration.rma_parts_fns import Blob  # pickles its buffer out of band, as numpy does
from tests.unit.daemon_harness import FakeAgent, harness_factory  # noqa: F401  (fixture)


def square(x):
    return x * x


def fails(kind):
    if kind == "value":
        raise ValueError("bad value")
    raise LookupError("gone")  # a built-in too: raised as itself


class Custom(Exception):
    pass


def custom():
    raise Custom("mine")


# -- the format -------------------------------------------------------------------------------

def test_a_call_by_reference_runs_and_its_result_decodes():
    data = pyapi.encode_call(square, (7,), {}, by_value=False)
    assert data[:4] == pyapi.MAGIC
    assert pyapi.decode_result(pyapi.call(data)) == 49


def test_a_call_by_value_carries_a_closure():
    k = 3
    data = pyapi.encode_call(lambda x: x + k, (4,), {}, by_value=True)
    assert pyapi.read_header(data)[1] & pyapi.BY_VALUE
    assert pyapi.decode_result(pyapi.call(data)) == 7


def test_arguments_and_values_without_an_importable_home_go_by_value():
    class Local:  # plain pickle cannot take it (Parsl's test_lifted returns one)
        def __init__(self, v):
            self.v = v

    def make(cls, v):
        return cls(v)

    data = pyapi.encode_call(square, (Local(2),), {}, by_value=False)
    assert pyapi.read_header(data)[1] & pyapi.BY_VALUE  # the argument took the call by value
    assert pyapi.decode_result(pyapi.call(pyapi.encode_call(square, (6,), {}, by_value=False))) == 36
    value = pyapi.decode_result(pyapi.call(pyapi.encode_call(make, (Local, 5), {}, by_value=True)))
    assert type(value).__name__ == "Local" and value.v == 5  # the value came back by value


def echo(value):
    return value


def test_large_buffers_go_out_of_band_and_come_back_writable():
    data = bytearray(os.urandom(1 << 16))
    call = pyapi.encode_call(echo, (Blob(data),), {}, by_value=False)
    assert pyapi.read_header(call)[1] & pyapi.OUT_OF_BAND
    assert call.endswith(bytes(data))  # after the pickle stream, not inside it
    result = pyapi.call(call)
    assert pyapi.read_header(result)[1] & pyapi.OUT_OF_BAND
    back = pyapi.decode_result(result).data
    assert back == data and isinstance(back, bytearray)  # its own writable copy
    for broken in (result[:-1], result[:12]):
        with pytest.raises(pyapi.BadCall):
            pyapi.decode_result(broken)


def test_parts_are_the_call_without_copies_of_its_buffers():
    data = bytearray(os.urandom(1 << 16))
    parts = pyapi.encode_call_parts(echo, (Blob(data),), {}, by_value=False)
    assert b"".join(parts) == pyapi.encode_call(echo, (Blob(data),), {}, by_value=False)
    assert parts[1].obj is data  # the argument's own memory: a transport copies it once, where it goes
    out = pyapi.call_parts(memoryview(b"".join(parts)))  # the executor's view of its receive buffer
    assert type(out) is list and len(out) == 2
    owned = bytearray(b"".join(out))
    value = pyapi.decode_result(owned, owned=True)  # a fresh receive buffer: the value keeps it
    assert value.data == data and value.data.obj is owned
    assert pyapi.decode_result(bytes(owned), owned=True).data == data  # read-only memory is copied
    assert pyapi.decode_result(owned).data is not owned  # not owned: copied


def test_segments_a_transport_gathered_decode_keeping_only_fresh_memory():
    big, small = bytearray(os.urandom(1 << 16)), bytearray(b"tiny")
    parts = pyapi.encode_call_parts(echo, ((Blob(big), Blob(small)),), {}, by_value=False)
    assert len(parts) == 3 and parts[1].obj is big and parts[2].obj is small
    whole = b"".join(parts)
    # as faas_runtime.rma.gather hands them over: the head a read-only view of the receive
    # slot, each large buffer in fresh writable memory of its own
    segments = [memoryview(parts[0]).toreadonly(), memoryview(bytearray(parts[1])), memoryview(bytes(parts[2]))]
    out = pyapi.call_parts(segments)
    assert b"".join(out) == b"".join(pyapi.call_parts(memoryview(whole)))
    segments[1][0] ^= 0xFF  # the function got the fresh memory itself, and returned it: no copy between
    assert out[1][0] == segments[1][0] != big[0]
    segments[1][0] ^= 0xFF
    value = pyapi.decode_result([memoryview(out[0]).toreadonly(), memoryview(bytearray(out[1])),
                                 memoryview(bytes(out[2]))])
    assert bytes(value[0].data) == big and bytes(value[1].data) == small
    assert isinstance(value[0].data, memoryview) and not value[0].data.readonly  # kept, not copied
    assert isinstance(value[1].data, bytearray)  # read-only memory (borrowed): copied
    # segments cut anywhere (not at the buffers): joined where needed, the same value
    for cut in (3, 9, len(whole) // 2, len(whole) - 1):
        got = pyapi.decode_result([memoryview(whole[:cut]), memoryview(bytearray(whole[cut:]))])
        assert [bytes(b.data) for b in got[1][0]] == [big, small]  # (fn, args, kwargs)
    with pytest.raises(pyapi.BadCall):
        pyapi.decode_result([memoryview(whole[:100]), memoryview(whole[101:])])  # a byte lost
    with pytest.raises(pyapi.BadCall):
        pyapi.decode_result([memoryview(whole), memoryview(b"x")])  # one too many


def test_json_documents_carry_the_same_bytes_both_ways():
    data = pyapi.encode_call(square, (5,), {}, by_value=False, json_result=True)
    out = pyapi.call(data)  # a JSON document, for a co-scheduler that stores JSON results
    assert set(out) == {pyapi.JSON_KEY}
    assert pyapi.decode_result(pyapi.from_json(json.loads(json.dumps(out)))) == 25
    assert pyapi.decode_result(pyapi.from_json(pyapi.call(pyapi.to_json(pyapi.encode_call(square, (2,), {}, False))))) == 4


def test_a_python_version_mismatch_is_named_before_anything_is_unpickled():
    data = bytearray(pyapi.encode_call(square, (1,), {}, by_value=True))
    data[6] = (sys.version_info[1] + 1) % 256  # the writer's minor version
    with pytest.raises(pyapi.PythonVersionMismatch, match="same minor version"):
        pyapi.call(bytes(data))
    data[6] = sys.version_info[1]
    data[5] = 2  # Python 2: refused even by reference
    with pytest.raises(pyapi.PythonVersionMismatch):
        pyapi.call(bytes(pyapi.encode_call(square, (1,), {}, False)[:5]) + bytes([2]) + bytes(data[6:]))


def test_garbage_is_refused():
    with pytest.raises(pyapi.BadCall):
        pyapi.call(b"not a call")
    with pytest.raises(pyapi.BadCall):
        pyapi.call({"x": 1})


def test_remote_errors_keep_built_in_types_and_the_traceback():
    exc = pyapi.remote_error("ValueError: bad value", "Traceback ...", slurm_faas.FunctionError)
    assert type(exc) is ValueError and str(exc) == "bad value"
    assert exc.remote_traceback == "Traceback ..." and isinstance(exc.__cause__, pyapi.RemoteTraceback)
    other = pyapi.remote_error("mymod.Custom: mine", None, slurm_faas.FunctionError)
    assert type(other) is slurm_faas.FunctionError and "Custom: mine" in str(other)
    assert type(pyapi.remote_error("SystemExit: 3", None, slurm_faas.FunctionError)) is slurm_faas.FunctionError


# -- how callables travel ---------------------------------------------------------------------

def test_module_functions_go_by_reference_from_their_root_and_the_rest_by_value(tmp_path):
    ship = shipping(square)
    assert not ship.by_value and ship.module_file == __file__.rstrip("c")
    assert ship.code_dir == str(pytest.importorskip("pathlib").Path(__file__).resolve().parents[2])
    assert shipping(lambda: 1).by_value
    assert not shipping(math.sqrt).by_value  # every Python has it
    assert shipping(square, str(tmp_path)).code_dir == str(tmp_path)


def test_the_executor_keeps_freed_memory_for_the_next_calls_buffers():
    from faas_runtime.executor_values import keep_freed_memory

    assert keep_freed_memory() is True  # glibc here; False (and nothing changed) without it


def test_map_chunks_count_only_the_calls_that_fit_the_lent_slots():
    from slurm_faas.executor import calls_fitting

    res = Resources().with_options({"cores": 2, "mem": "1G"})
    assert calls_fitting({"slurm_cpus": [0, 1, 2, 3, 4], "mem_mb": 8192}, res) == 2  # by cores
    assert calls_fitting({"slurm_cpus": [0, 1, 2, 3], "mem_mb": 1500}, res) == 1  # by memory
    assert calls_fitting({"slurm_cpus": [0], "mem_mb": 8192}, res) == 0  # too small for one call
    assert calls_fitting({"slurm_cpus": [0, 1]}, res) == 1


def test_resources_and_the_function_they_name():
    res = Resources().with_options({"cores": 2, "mem": "2G", "timeout": 30, "priority": 5})
    assert (res.cores, res.mem_mb, res.timeout_s, res.priority) == (2, 2048, 30.0, 5)
    assert mem_mb("512M") == 512 and mem_mb(100) == 100 and mem_mb("1GiB") == 1024
    with pytest.raises(ValueError):
        mem_mb("lots")
    with pytest.raises(TypeError, match="unknown option"):
        Resources().with_options({"gpus": 1})
    a, b = function_spec(res, "/x"), function_spec(res.with_options({"priority": 9}), "/x")
    assert a == b and a["entrypoint"] == pyapi.ENTRYPOINT  # priority is the invocation's
    assert function_spec(res.with_options({"cores": 3}), "/x")["name"] != a["name"]


# -- the wire ---------------------------------------------------------------------------------

def test_a_request_digest_binds_bytes_and_is_the_plain_digest_without_them():
    msg = {"type": "invoke", "rid": "1", "payload_json": "1"}
    assert auth.request_digest(msg) == P.body_digest(msg)
    a = auth.request_digest({"type": "invoke-batch", "payloads": [b"a", "1"]})
    assert a != auth.request_digest({"type": "invoke-batch", "payloads": [b"b", "1"]})


def test_the_executor_passes_bytes_in_and_out():
    assert call_payload({P.PAYLOAD_BIN: b"\x00"}) == (b"\x00", True)
    assert call_payload({"payload_json": b"\x01"}) == (b"\x01", True)  # a stored binary payload in a RUN
    assert call_payload({"payload_json": "[1]"}) == ("[1]", False)
    assert value_out(b"\xff", True) == {P.VALUE_BIN: b"\xff"}
    assert value_out({"a": 1}, True) == {"value_json": '{"a": 1}'}


# -- through the co-scheduler's loop ----------------------------------------------------------

class TrampolineAgent(FakeAgent):
    """Runs every RUN with the real trampoline, as the executor would."""

    def _on_run(self, msg):
        self.runs.append(msg)
        ids = {"invocation_id": msg["invocation_id"], "attempt": msg["attempt"]}
        payload, binary = call_payload(msg)
        try:
            value = pyapi.call(payload if binary else json.loads(payload))
            self.report(P.RESULT, **ids, outcome="ok", cpus=msg["os_cpus"], **value_out(value, binary))
        except Exception as exc:
            self.report(P.RESULT, **ids, outcome="error", error=f"{type(exc).__name__}: {exc}",
                        traceback="Traceback (most recent call last):\n  ...\n", cpus=msg["os_cpus"])


@pytest.fixture
def executor(harness_factory, tmp_path):  # noqa: F811
    h = harness_factory()
    h.agents.append(TrampolineAgent(h.endpoint, "n1", 1))
    h.slurm.alive[1] = __import__("coscheduler.slurm", fromlist=["JobInfo"]).JobInfo(1, "RUNNING", None, "n1", 0)
    with slurm_faas.Executor(h.endpoint, code_dir=str(tmp_path), timeout=10) as ex:
        ex.harness = h
        yield ex


def test_submit_map_errors_and_pushed_results(executor):
    assert executor.submit(square, 12).result(timeout=60) == 144
    assert list(executor.map(square, range(50))) == [i * i for i in range(50)]
    assert list(executor.map(square, range(25), chunksize=10)) == [i * i for i in range(25)]
    k = 10
    assert executor.submit(lambda x: x + k, 1).result(timeout=60) == 11  # by value
    with pytest.raises(ValueError, match="bad value") as err:
        executor.submit(fails, "value").result(timeout=60)
    assert err.value.remote_traceback
    with pytest.raises(slurm_faas.FunctionError):
        executor.submit(custom).result(timeout=60)
    # Nothing polled: every result came after an ENDED push (the sweep waits SWEEP_S).
    assert executor.harness.daemon.subscriptions.subscriber == {}


def test_payloads_are_stored_as_bytes_and_bounded(executor):
    fut = executor.submit(square, 3)
    assert fut.result(timeout=60) == 9
    from coscheduler import db as D

    with executor.harness.database.session() as s:
        inv = s.get(D.Invocation, fut.invocation_id)
        assert inv.payload == "" and inv.payload_bin[:4] == pyapi.MAGIC
    big = executor.submit(len, b"x" * (2 << 20))
    with pytest.raises(slurm_faas.PayloadTooLarge):
        big.result(timeout=60)


def test_attach_collects_by_id_from_another_connection(executor):
    ids = [f.invocation_id for f in [executor.submit(square, i) for i in range(5)] if f.result(timeout=60) >= 0]
    with slurm_faas.Executor(executor.endpoint) as other:
        assert [f.result(timeout=60) for f in other.attach(ids)] == [i * i for i in range(5)]


def test_cancel_and_shutdown(harness_factory, tmp_path):  # noqa: F811
    h = harness_factory()  # no agent: nothing runs
    ex = slurm_faas.Executor(h.endpoint, code_dir=str(tmp_path))
    futs = [ex.submit(square, i) for i in range(3)]
    assert futs[0].cancel() and futs[0].cancelled()
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futs)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    with pytest.raises(cf.CancelledError):
        futs[1].result()
