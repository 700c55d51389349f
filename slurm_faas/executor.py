"""``slurm_faas.Executor``: a ``concurrent.futures.Executor`` whose calls run on lent cores.

    from slurm_faas import Executor

    with Executor(cores=1, mem="512M", timeout=60) as ex:
        fut = ex.submit(score, sample, weight=2)     # a Future, now
        values = list(ex.map(score, samples, chunksize=100))
        print(fut.result())

Each call is one invocation of the co-scheduler's queue (``faas_runtime.pyapi``: the
callable and its arguments pickled, opaque bytes to the service). One thread per executor
owns its connection: it queues what ``submit`` hands it with INVOKE_BATCH (up to
``batch_size`` a request, subscribed on the connection), hears ENDED pushes, collects the
values with RESULTS and resolves the futures. Nothing polls while pushes come; a safety
sweep asks about outstanding calls when nothing was heard for ``SWEEP_S``.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from faas_runtime import protocol as P
from faas_runtime import pyapi
from faas_runtime.queue_client import Client, PayloadTooLarge, RequestError, Unavailable, user_address

from .errors import FunctionError, FunctionTimedOut
from .functions import Resources, ensure_registered, function_spec, shipping

log = logging.getLogger("slurm_faas")

SWEEP_S = 5.0  # ask about outstanding calls when no push came for this long
TICK_S = 0.01  # the connection thread's wait for pushes between batches
RESULTS_CHUNK = 1000
MAX_AUTO_CHUNK = 1000  # items per invocation when map chooses (payload and latency bound)


class InvocationFuture(cf.Future):
    """A Future of one call; ``invocation_id`` once queued. ``cancel()`` cancels the
    invocation in the co-scheduler too (queued or running)."""

    def __init__(self, executor: "Executor"):
        super().__init__()
        self._executor = executor
        self.invocation_id: Optional[int] = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._executor._cancelled(self)
        return True


class _Call:
    __slots__ = ("future", "payload", "name", "spec", "module_file", "priority")

    def __init__(self, future, payload, spec, module_file, priority):
        self.future, self.payload, self.spec = future, payload, spec
        self.name, self.module_file, self.priority = spec["name"], module_file, priority


class Executor(cf.Executor):
    """Calls on the lent cores of Slurm jobs. Options (also per ``submit``, as keyword
    arguments ``_cores=`` ...: see ``submit``): ``cores``, ``mem`` (MiB or "4G"),
    ``timeout`` (s), ``container`` (an image), ``runtime``, ``max_attempts``, ``priority``,
    ``code_dir``. ``endpoint`` and ``munge_socket`` default to FAAS_COSCHEDULER and
    FAAS_MUNGE_SOCKET."""

    def __init__(self, endpoint: Optional[str] = None, munge_socket: Optional[str] = None, *,
                 batch_size: int = 1000, request_timeout_s: float = 60.0, **options: Any):
        self.endpoint, self.munge_socket = user_address(endpoint, munge_socket)
        self.resources = Resources().with_options(options)
        self.batch_size = batch_size
        self._client = Client(self.endpoint, self.munge_socket, timeout_s=request_timeout_s)
        self._inbox: "queue.SimpleQueue[_Call]" = queue.SimpleQueue()
        self._cancels: "queue.SimpleQueue[InvocationFuture]" = queue.SimpleQueue()
        self._outstanding: dict[int, InvocationFuture] = {}  # queued, by invocation id (the thread's)
        self._live: set[InvocationFuture] = set()  # every future not done yet (shutdown's)
        self._registered: set[str] = set()
        self._limits: dict[str, Any] = {}
        self._shutdown = False
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="slurm_faas-executor", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    # -- the public API -------------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> InvocationFuture:
        """Call ``fn(*args, **kwargs)`` on a lent core; a Future of its value. Options for
        some calls only: ``executor.options(cores=4).submit(...)``."""
        return self._submit(fn, fn, args, kwargs, self.resources)

    def options(self, **options: Any) -> "_Bound":
        """This executor with other resources for the calls made through the result:
        ``ex.options(cores=4, mem="8G", priority=5).submit(fn, x)``."""
        return _Bound(self, self.resources.with_options(options))

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: Optional[int] = None, **options: Any) -> Iterator:
        """``fn`` over the iterables, in order; ``chunksize`` items per invocation. By
        default (None) the items are split in about four chunks per lent core, as
        ``multiprocessing.Pool.map`` does per worker: many small calls become a few larger
        invocations while every lent core still gets work. ``chunksize=1``: one invocation
        per item (long calls, each on its own core)."""
        return self._map(fn, iterables, timeout, chunksize, self.resources.with_options(options))

    def _map(self, fn: Callable, iterables: tuple, timeout: Optional[float], chunksize: Optional[int],
             res: Resources) -> Iterator:
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        items = list(zip(*iterables))
        if chunksize is None:
            chunksize = max(1, min(MAX_AUTO_CHUNK, len(items) // (4 * self._lent_cores(res))))
        if chunksize == 1:
            futures = [self._submit(fn, fn, args, {}, res) for args in items]
        else:
            chunks = _chunks(iter(items), chunksize)
            futures = [self._submit(fn, pyapi.call_chunk, (fn, chunk), {}, res) for chunk in chunks]
        results = _ordered(futures, timeout)
        return results if chunksize == 1 else itertools.chain.from_iterable(results)

    def _lent_cores(self, res: Resources) -> int:
        """How many calls with ``res`` the lent cores run at once now (at least 1): per
        ACTIVE slot, its cores over the call's cores, bounded by its memory over the call's
        (a slot too small for the call counts none). A connection of its own: the thread
        owns the other."""
        try:
            with Client(self.endpoint, self.munge_socket, timeout_s=10.0) as client:
                slots = client.slots()
        except (RequestError, Unavailable):
            return 1
        return max(1, sum(calls_fitting(s, res) for s in slots if s.get("state") == "ACTIVE"))

    def attach(self, invocation_ids: list[int]) -> list[InvocationFuture]:
        """Futures for invocations queued earlier (by another connection or process): a
        client that comes back collects its results by id."""
        futures = []
        for inv_id in invocation_ids:
            fut = InvocationFuture(self)
            fut.invocation_id = int(inv_id)
            with self._lock:
                self._live.add(fut)
            fut.add_done_callback(self._forget)
            futures.append(fut)
        self._inbox.put(_Call(None, futures, {"name": ""}, None, 0))
        return futures

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        with self._lock:
            live = list(self._live)
        if cancel_futures:
            for fut in live:
                fut.cancel()
        if wait:
            for fut in live:
                try:
                    fut.exception()
                except cf.CancelledError:
                    pass
        self._stop.set()
        if wait:
            self._thread.join()

    # -- submitting -----------------------------------------------------------------------

    def _submit(self, user_fn: Callable, fn: Callable, args: tuple, kwargs: dict, res: Resources
                ) -> InvocationFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
        if self._error is not None:
            raise self._error
        ship = shipping(user_fn, res.code_dir)
        payload = pyapi.encode_call(fn, args, kwargs, ship.by_value,
                                    json_result=not self._limits.get("binary_results"))
        fut = InvocationFuture(self)
        with self._lock:
            self._live.add(fut)
        fut.add_done_callback(self._forget)
        self._inbox.put(_Call(fut, payload, function_spec(res, ship.code_dir), ship.module_file, res.priority))
        return fut

    def _forget(self, fut: cf.Future) -> None:
        with self._lock:
            self._live.discard(fut)

    def _cancelled(self, fut: InvocationFuture) -> None:
        self._cancels.put(fut)

    # -- the connection's thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            pong = self._client.ping()
            self._limits.update(pong)
        except BaseException as exc:  # noqa: BLE001 - raised in the constructor
            self._error = Unavailable(f"no co-scheduler at {self.endpoint}: {exc}")
            self._ready.set()
            return
        self._ready.set()
        last_heard = time.monotonic()
        try:
            while not (self._stop.is_set() and self._inbox.empty()):
                self._send_batches()
                self._send_cancels()
                pushed = self._client.take_pushed(0 if not self._inbox.empty() else TICK_S)
                if pushed:
                    last_heard = time.monotonic()
                    self._collect([inv_id for inv_id, _ in pushed])
                elif self._outstanding and time.monotonic() - last_heard > SWEEP_S:
                    last_heard = time.monotonic()
                    self._collect(list(self._outstanding))
        except BaseException as exc:  # noqa: BLE001 - every waiting future hears it
            log.exception("the slurm_faas connection thread failed")
            self._error = exc
            for fut in list(self._outstanding.values()):
                _settle(fut, exc)
            while not self._inbox.empty():
                call = self._inbox.get()
                if call.future is not None:
                    _settle(call.future, exc)
        finally:
            self._client.close()

    def _send_batches(self) -> None:
        calls: list[_Call] = []
        while len(calls) < self.batch_size * 4 and not self._inbox.empty():
            calls.append(self._inbox.get())
        groups: dict[tuple[str, int], list[_Call]] = {}
        for call in calls:
            if call.future is None:  # attach(): already queued
                for fut in call.payload:
                    self._outstanding[fut.invocation_id] = fut
                self._collect([f.invocation_id for f in call.payload], subscribe=True)
                continue
            if call.future.cancelled():
                continue
            limit = self._limits.get("max_payload_bytes")
            if limit is not None and len(call.payload) > limit:
                _settle(call.future, PayloadTooLarge(P.E_TOO_LARGE, f"the call is {len(call.payload)} bytes "
                                                                    f"pickled; the co-scheduler takes at most {limit}"))
                continue
            groups.setdefault((call.name, call.priority), []).append(call)
        for (name, priority), group in groups.items():
            try:
                if name not in self._registered:
                    ensure_registered(self._client, group[0].spec, group[0].module_file)
                    self._limits.update(self._client.check_batch(name, 0, priority))
                    self._registered.add(name)
                ids = self._client.invoke_batch(name, [c.payload for c in group], priority, chunk=self.batch_size,
                                                subscribe=True)
            except (RequestError, Unavailable) as exc:
                for call in group:
                    _settle(call.future, exc)
                continue
            for call, inv_id in zip(group, ids):
                call.future.invocation_id = inv_id
                self._outstanding[inv_id] = call.future
                if call.future.cancelled():  # cancelled while it was being queued
                    self._cancels.put(call.future)

    def _send_cancels(self) -> None:
        while not self._cancels.empty():
            fut = self._cancels.get()
            if fut.invocation_id is None:
                continue  # not queued yet: _send_batches skips it
            self._outstanding.pop(fut.invocation_id, None)
            try:
                self._client.cancel(fut.invocation_id)
            except RequestError:
                pass  # it ended meanwhile

    def _collect(self, ids: list[int], subscribe: bool = False) -> None:
        """Resolve the futures of those of ``ids`` that ended."""
        ids = [i for i in ids if i in self._outstanding]
        if subscribe and ids:
            self._client.subscribe(ids)
        for start in range(0, len(ids), RESULTS_CHUNK):
            for row in self._client.results(ids[start:start + RESULTS_CHUNK]):
                fut = self._outstanding.get(row["invocation_id"])
                if fut is None or row.get("state") not in _ENDED:
                    continue  # not ended (a stale push) or not ours any more
                del self._outstanding[row["invocation_id"]]
                _resolve(fut, row)


_ENDED = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def _resolve(fut: InvocationFuture, row: dict) -> None:
    state = row["state"]
    if state == "SUCCEEDED":
        try:
            if P.VALUE_BIN in row:
                value = pyapi.decode_result(row[P.VALUE_BIN])
            else:
                import json

                value = pyapi.decode_result(pyapi.from_json(json.loads(row.get("value_json") or "null")))
        except BaseException as exc:  # noqa: BLE001 - the caller's result() raises it
            _settle(fut, exc)
            return
        if fut.set_running_or_notify_cancel():
            fut.set_result(value)
    elif state == "CANCELLED":
        fut.cancel()
    else:
        error, tb = row.get("error"), row.get("traceback")
        if state == "TIMED_OUT":
            exc: BaseException = FunctionTimedOut(error or "timed out", tb)
        elif (error or "").startswith("PythonVersionMismatch: "):
            exc = pyapi.PythonVersionMismatch(error.partition(": ")[2])
        else:
            exc = pyapi.remote_error(error, tb, FunctionError)
        _settle(fut, exc)


def calls_fitting(slot: dict, res: Resources) -> int:
    """Calls with ``res`` (cores, mem_mb) that fit side by side in a slot row of ``slots()``."""
    by_cores = len(slot.get("slurm_cpus") or ()) // max(1, res.cores)
    mem = slot.get("mem_mb")
    return by_cores if not isinstance(mem, int) else min(by_cores, mem // max(1, res.mem_mb))


def _settle(fut: Optional[cf.Future], exc: BaseException) -> None:
    if fut is not None and not fut.done() and fut.set_running_or_notify_cancel():
        fut.set_exception(exc)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _ordered(futures: list[cf.Future], timeout: Optional[float]) -> Iterator:
    """Their results in order (as ``Executor.map``); the rest are cancelled on an error."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for fut in futures:
            yield fut.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
    finally:
        for fut in futures:
            fut.cancel()


class _Bound:
    """An executor with other options: ``submit`` and ``map`` with those."""

    def __init__(self, executor: Executor, res: Resources):
        self._executor, self._res = executor, res

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> InvocationFuture:
        return self._executor._submit(fn, fn, args, kwargs, self._res)

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: Optional[int] = None) -> Iterator:
        return self._executor._map(fn, iterables, timeout, chunksize, self._res)
