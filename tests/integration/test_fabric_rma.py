"""libfabric RMA data path between two processes, over the tcp (ofi_rxm) and shm providers.

Byte-exact payloads and results (sha256) from 0 B to 64 MiB, several concurrent clients
on one executor, failing functions, an executor or a client killed mid-operation, the
remote-memory revoke with its registration count, and the ZeroMQ fallback.
"""
from __future__ import annotations

import hashlib
import queue
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faas_runtime import fabric
from tests.conftest import missing

HERE = Path(__file__).resolve().parent
PROVIDERS = ["tcp", "shm"]
TIMEOUT = 60.0  # generous: other engineers share this 2-CPU machine
OP_TIMEOUT = 5.0  # one remote-memory operation, where a test waits for a revoke to surface

if not fabric.available():
    missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")


def config(provider: str) -> fabric.FabricConfig:
    return fabric.FabricConfig(provider, "lo" if provider == "tcp" else "")


def env_for(provider: str) -> dict[str, str]:
    return dict(os.environ, FAAS_FABRIC=provider, FAAS_FABRIC_DOMAIN="lo" if provider == "tcp" else "",
                PYTHONPATH=str(HERE.parents[1]))


def _die_with_parent() -> None:
    """Spawned test workers busy-poll; if pytest dies they must not spin on (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class Proc:
    """A child serving process that writes its control address to a ready file."""

    def __init__(self, argv: list[str], provider: str, tmp: Path):
        ready = tmp / f"ready-{os.getpid()}-{time.monotonic_ns()}"
        self.p = subprocess.Popen([sys.executable, "-m", *argv, "--ready-file", str(ready)],
                                  env=env_for(provider), stderr=subprocess.PIPE, text=True,
                                  preexec_fn=_die_with_parent)
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            if self.p.poll() is not None:
                raise RuntimeError(f"server exited: {self.p.stderr.read()}")
            if time.monotonic() > deadline:
                self.p.kill()
                raise RuntimeError("server not ready")
            time.sleep(0.02)
        self.control = ready.read_text()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@pytest.fixture(params=PROVIDERS)
def provider(request):
    try:
        fabric.Endpoint(config(request.param)).close()
    except fabric.FabricError as exc:
        missing(f"provider {request.param} unusable here: {exc}")
    return request.param


@pytest.fixture
def executor(provider, tmp_path):
    proc = Proc(["faas_runtime.rma", "--entrypoint", "fabric_fns:digest_echo", "--code", str(HERE)],
                provider, tmp_path)
    yield proc
    proc.stop()


SIZES = [0, 1, 63, 64, 4096, 65504, 65505, 1 << 20, (1 << 20) + 7, 64 << 20]


def test_payloads_and_results_are_byte_exact(provider, executor):
    from faas_runtime.rma import RmaClient
    before = fabric.registrations()
    with RmaClient(executor.control, config(provider), timeout=TIMEOUT) as client:
        for n in SIZES:
            payload = os.urandom(n)
            result = client.invoke(payload)
            assert len(result) == 32 + n
            assert bytes(result[:32]) == hashlib.sha256(payload).digest(), n
            assert hashlib.sha256(result[32:]).digest() == hashlib.sha256(payload).digest(), n
    assert fabric.registrations() == before


def _client_worker(control, provider, index, rounds, out):
    _die_with_parent()
    from faas_runtime.rma import RmaClient
    try:
        with RmaClient(control, config(provider), timeout=TIMEOUT) as client:
            for i in range(rounds):
                payload = f"client {index} round {i} ".encode() * (1 + (i * 37) % 3000)
                result = client.invoke(payload)
                if bytes(result[:32]) != hashlib.sha256(payload).digest() or bytes(result[32:]) != payload:
                    out.put((index, f"mismatch in round {i}"))
                    return
        out.put((index, "ok"))
    except Exception as exc:  # reported to the test
        out.put((index, repr(exc)))


def test_several_concurrent_clients_on_one_executor(provider, executor):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    # daemon: a worker stuck in the provider (e.g. spinning on a dead peer's shm lock) must
    # not keep pytest waiting for it at exit; the finally kills what is left.
    procs = [ctx.Process(target=_client_worker, args=(executor.control, provider, i, 60, out), daemon=True)
             for i in range(4)]
    try:
        for p in procs:
            p.start()
        results = dict(out.get(timeout=TIMEOUT * 2) for _ in procs)
        for p in procs:
            p.join(TIMEOUT)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(TIMEOUT)
    assert results == {i: "ok" for i in range(4)}


def test_function_error_is_a_typed_result(provider, tmp_path):
    from faas_runtime.rma import RemoteFunctionError, RmaClient
    proc = Proc(["faas_runtime.rma", "--entrypoint", "fabric_fns:boom", "--code", str(HERE)], provider, tmp_path)
    try:
        with RmaClient(proc.control, config(provider), timeout=TIMEOUT) as client:
            for _ in range(2):  # the executor carries on after a failing call
                with pytest.raises(RemoteFunctionError, match="ValueError: boom from the executor"):
                    client.invoke(b"x")
    finally:
        proc.stop()


def test_executor_killed_mid_call_gives_typed_error(provider, tmp_path):
    from faas_runtime.rma import ExecutorLost, RmaClient
    proc = Proc(["faas_runtime.rma", "--entrypoint", "fabric_fns:slow", "--code", str(HERE)], provider, tmp_path)
    try:
        client = RmaClient(proc.control, config(provider), timeout=10)
        threading.Timer(1.0, proc.p.kill).start()
        with pytest.raises(ExecutorLost):
            client.invoke(b"5")
        with pytest.raises(ExecutorLost):  # and stays lost
            client.invoke(b"0")
        client.close()
    finally:
        proc.stop()


def _doomed_client(control, provider, started):
    _die_with_parent()
    from faas_runtime.rma import RmaClient
    client = RmaClient(control, config(provider), timeout=TIMEOUT)
    started.set()
    client.invoke(b"2")  # killed while the executor runs this


def test_client_killed_mid_call_leaves_executor_serving(provider, tmp_path):
    from faas_runtime.rma import RmaClient
    proc = Proc(["faas_runtime.rma", "--entrypoint", "fabric_fns:slow", "--code", str(HERE)], provider, tmp_path)
    try:
        ctx = multiprocessing.get_context("spawn")
        started = ctx.Event()
        doomed = ctx.Process(target=_doomed_client, args=(proc.control, provider, started), daemon=True)
        doomed.start()
        assert started.wait(TIMEOUT)
        time.sleep(0.5)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(TIMEOUT)
        with RmaClient(proc.control, config(provider), timeout=TIMEOUT) as client:
            assert client.invoke(b"0") == b"late"
        assert proc.p.poll() is None
    finally:
        proc.stop()


# -- remote memory -------------------------------------------------------------------
def _memory_reader(control, provider, out, stop_after_revoked):
    _die_with_parent()
    from faas_runtime.remote_memory import RemoteMemory, RemoteMemoryRevoked
    before = fabric.registrations()
    try:
        # A short operation timeout: on shm a read in flight when the buffer is released never
        # completes, and surfaces as RemoteMemoryRevoked only when it times out (docs/fabric.md).
        with RemoteMemory(control, config(provider), timeout=OP_TIMEOUT) as rm:
            pattern = hashlib.sha256(b"block").digest() * (rm.size // 32)
            rm.write(0, pattern)
            out.put(("written", rm.size))
            reads = 0
            while True:
                try:
                    data = rm.read(0, rm.size)
                except RemoteMemoryRevoked:
                    out.put(("revoked", reads))
                    break
                if data != pattern:  # never stale or torn data
                    out.put(("torn", reads))
                    return
                reads += 1
            try:
                rm.read(0, 1)
                out.put(("no-error-after-revoke", 0))
            except RemoteMemoryRevoked:
                pass
    except Exception as exc:
        out.put(("crash", repr(exc)))
        return
    out.put(("registrations", fabric.registrations() - before))


def test_remote_memory_revoke_during_transfers(provider):
    from faas_runtime.remote_memory import MemoryServer
    before = fabric.registrations()
    server = MemoryServer(8 << 20, config=config(provider), nap_us=50)
    assert fabric.registrations() == before + 1
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    reader = ctx.Process(target=_memory_reader, args=(server.control, provider, out, True), daemon=True)
    reader.start()
    def next_message():
        # Keep answering the reader's control requests (attach, epoch checks) while waiting.
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            server.handle(50)
            try:
                return out.get_nowait()
            except queue.Empty:
                pass
        raise AssertionError("no message from the reader")

    try:
        assert next_message() == ("written", 8 << 20)
        pause = time.monotonic() + 0.5  # let reads run, then revoke in the middle of them
        while time.monotonic() < pause:
            server.handle(50)
        server.revoke()
        assert fabric.registrations() == before  # the buffer's registration is gone
        kind, reads = next_message()
        assert kind == "revoked", (kind, reads)
        assert next_message() == ("registrations", 0)
        reader.join(TIMEOUT)
        assert reader.exitcode == 0
    finally:
        if reader.is_alive():
            reader.kill()
        server.close()
    assert fabric.registrations() == before


def test_remote_memory_bounds_and_attach_after_revoke(provider):
    from faas_runtime.remote_memory import MemoryServer, RemoteMemory, RemoteMemoryRevoked
    server = MemoryServer(4096, config=config(provider), nap_us=50)
    try:
        t = threading.Thread(target=lambda: [server.handle(20) for _ in range(100)], daemon=True)
        t.start()
        with RemoteMemory(server.control, config(provider), timeout=TIMEOUT) as rm:
            rm.write(4000, b"tail!")
            assert rm.read(4000, 5) == b"tail!"
            with pytest.raises(IndexError):
                rm.read(4095, 2)
        t.join()
        server.revoke()
        t = threading.Thread(target=lambda: [server.handle(20) for _ in range(100)], daemon=True)
        t.start()
        with pytest.raises(RemoteMemoryRevoked):
            RemoteMemory(server.control, config(provider), timeout=TIMEOUT)
        t.join()
    finally:
        server.close()


def test_remote_memory_after_idle_back_off_is_exact(provider, tmp_path):
    """The server's progress loop backs off when idle (default options): transfers after
    idle periods (the server asleep) and bursts of them are byte-exact, small and large."""
    from faas_runtime.remote_memory import RemoteMemory

    server = Proc(["faas_runtime.remote_memory", "--size", "12M"], provider, tmp_path)
    try:
        with RemoteMemory(server.control, config(provider), timeout=TIMEOUT) as rm:
            for cycle in range(4):
                time.sleep(0.3)  # idle: past the spin phase, the loop naps
                block = os.urandom(64 if cycle % 2 else 10 << 20)
                offset = (cycle * 4099) % 4096
                rm.write(offset, block)
                assert hashlib.sha256(rm.read(offset, len(block))).digest() == hashlib.sha256(block).digest()
                for i in range(50):  # a burst right after
                    assert rm.read(offset + i, 8) == block[i: i + 8]
    finally:
        server.stop()


def test_memory_server_endpoint_sees_one_sided_use(provider):
    """shm counts remote reads and writes (FI_RMA_EVENT); tcp;ofi_rxm has no counter and
    the loop goes by poll times. Either way a client's transfers are served."""
    from faas_runtime.remote_memory import MemoryServer, RemoteMemory

    with MemoryServer(1 << 20, config=config(provider)) as server:
        assert server.ep.activity == ("counter" if provider == "shm" else "poll-time")
        t = threading.Thread(target=lambda: [server.handle(20) for _ in range(100)], daemon=True)
        t.start()
        with RemoteMemory(server.control, config(provider), timeout=TIMEOUT) as rm:
            rm.write(100, b"counted")
            assert rm.read(100, 7) == b"counted"
        t.join()


def test_remote_memory_server_killed_gives_lost_not_a_hang_nor_stale_data(provider, tmp_path):
    """SIGKILL the memory server while a client reads in a loop: every read returns the
    bytes written or raises RemoteMemoryLost (a RemoteMemoryRevoked), never other data;
    the client does not wait out its (long) operation timeout, later accesses fail the
    same way at once, and no registration is left."""
    from faas_runtime.remote_memory import RemoteMemory, RemoteMemoryLost, RemoteMemoryRevoked

    server = Proc(["faas_runtime.remote_memory", "--size", "8M"], provider, tmp_path)
    before = fabric.registrations()
    outcome: dict = {}
    try:
        rm = RemoteMemory(server.control, config(provider), timeout=600)  # a hang would be a long one
        pattern = hashlib.sha256(b"killed").digest() * ((8 << 20) // 32)
        rm.write(0, pattern)
        assert rm.read(0, 1 << 20) == pattern[: 1 << 20]
        reading = threading.Event()

        def reader():
            reads = 0
            try:
                while True:
                    n = (1 << 20) if reads % 2 else 64
                    data = rm.read(reads % 4096, n)
                    if data != pattern[reads % 4096: reads % 4096 + n]:
                        outcome["stale"] = reads
                        return
                    reads += 1
                    if reads == 20:
                        reading.set()
            except Exception as exc:  # the typed error the test expects
                outcome["error"] = exc
                outcome["reads"] = reads

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert reading.wait(TIMEOUT)
        os.kill(server.p.pid, signal.SIGKILL)
        t.join(120)  # the reads' timeout is 600 s: the thread must end long before
        assert not t.is_alive(), "the client hangs after its server was killed"
        assert "stale" not in outcome
        assert isinstance(outcome["error"], RemoteMemoryLost), repr(outcome["error"])
        assert isinstance(outcome["error"], RemoteMemoryRevoked) and outcome["reads"] >= 20
        for access in (lambda: rm.read(0, 64), lambda: rm.write(0, b"x"), lambda: rm.read_into(0, bytearray(8))):
            with pytest.raises(RemoteMemoryLost):
                access()
        rm.close()
        assert fabric.registrations() == before
    finally:
        server.stop()


# -- ZeroMQ fallback -----------------------------------------------------------------
FALLBACK_PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
{prelude}
from faas_runtime import fabric
print("available", fabric.available())
print("endpoint", fabric.open_endpoint_or_none())
print("endpoint", fabric.open_endpoint_or_none())
"""


@pytest.mark.parametrize("case", ["binding-absent", "configured-off", "provider-missing"])
def test_zeromq_fallback_says_so_once(case):
    prelude = "sys.modules['faas_runtime._fabric'] = None" if case == "binding-absent" else ""
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    env["FAAS_FABRIC"] = {"binding-absent": "tcp", "configured-off": "off", "provider-missing": "verbs"}[case]
    run = subprocess.run([sys.executable, "-c", FALLBACK_PROBE.format(prelude=prelude)], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    notes = [ln for ln in lines if "running on ZeroMQ alone" in ln]
    assert len(notes) == 1, lines
    assert lines.count("endpoint None") == 2
    if case == "binding-absent":
        assert "available False" in lines and "libfabric-dev" in notes[0]
    if case == "provider-missing":
        assert "No data available" in notes[0]  # fi_strerror text


def test_write_plus_send_signalling_when_cq_data_is_off(provider, tmp_path, monkeypatch):
    """Providers without remote CQ data: fi_write, then an 8-byte send (forced here)."""
    from faas_runtime.rma import RmaClient
    monkeypatch.setenv("FAAS_FABRIC_NO_CQDATA", "1")
    proc = Proc(["faas_runtime.rma", "--entrypoint", "fabric_fns:digest_echo", "--code", str(HERE)],
                provider, tmp_path)
    try:
        cfg = fabric.FabricConfig(config(provider).provider, config(provider).domain, no_cqdata=True)
        with RmaClient(proc.control, cfg, timeout=TIMEOUT) as client:
            assert client.ep.describe()["signal"] == "write+send"
            for n in (0, 100, 65505, 3 << 20):
                payload = os.urandom(n)
                result = client.invoke(payload)
                assert bytes(result[:32]) == hashlib.sha256(payload).digest() and bytes(result[32:]) == payload
    finally:
        proc.stop()
