"""The executor's RMA side: a hot lease's calls over libfabric, beside its ZeroMQ sockets.

A mixin of :class:`faas_runtime.executor.Executor` (which owns the state it uses: ``rma``,
``rma_failed``, ``rma_threads``, ``tokens``, ``fn``, ``native``, ``fn_lock``); see that
module's docstring for the protocol. Kept apart so the executor's ZeroMQ loop reads on its own.

Owns: opening, serving and ending the executor's RMA endpoints. May not touch: the agent's state.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import traceback
from typing import Any, Optional

import zmq

from . import protocol as P
from . import pyapi
from .executor_values import NotJSON, value_to_json
from .native import NativeFunctionError

log = logging.getLogger("faas.executor")


class RmaServing:
    def _rma_running(self, provider: str) -> bool:
        t = self.rma_threads.get(provider)
        return t is not None and t.is_alive()

    def _rma_open(self, fabric: Any) -> Optional[dict]:
        """The RMA endpoint for a GRANT's ``fabric`` request, opened on first use; None if
        libfabric, the binding or the provider is not usable here (said once)."""
        if not isinstance(fabric, dict) or not fabric.get("provider") or self.fn is None:
            return None
        provider = str(fabric["provider"])
        if provider in self.rma_failed:
            return None
        r = self.rma.get(provider)
        if r is None:
            try:
                from .fabric import FabricConfig
                from .rma import HandlerError, RmaExecutor

                self._rma_handler_error = HandlerError

                config = FabricConfig(provider, str(fabric.get("domain") or ""), bool(fabric.get("no_cqdata")))
                if not config.enabled:
                    return None
                handler: Any = self._rma_handler
                if self.native is not None:  # answered by the C loop (no Python per call)
                    from .rma import NativeHandler

                    handler = NativeHandler(self.native, error_text=_native_error_doc, check_json=True)
                r = RmaExecutor(handler, f"tcp://{self.hot_host}:0", config, ctx=zmq.Context(),
                                authorize=self._rma_authorize, segments=handler == self._rma_handler)
            except Exception as exc:  # FabricUnavailable, FabricError, ImportError: ZeroMQ alone
                self.rma_failed[provider] = f"{type(exc).__name__}: {exc}"
                log.warning("RMA with provider %s is off in this executor, hot calls use ZeroMQ: %s", provider, exc)
                return None
            self.rma[provider] = r
            # libfabric (its shm code) installs its own SIGTERM/SIGINT handlers, which exit the
            # process: ours must run, so that clients hear LEASE_ENDED first.
            signal.signal(signal.SIGTERM, self.on_sigterm)
            signal.signal(signal.SIGINT, self.on_sigterm)
        return {"control": r.control, "provider": r.ep.provider}

    def _rma_authorize(self, msg: dict) -> str:
        token = msg.get("token")
        if not isinstance(token, str) or token not in self.tokens:
            raise P.ProtocolError(P.E_LEASE, "no valid lease for this executor (ended or never granted)")
        return token

    def _rma_handler(self, payload: memoryview) -> Any:
        """JSON bytes in, JSON bytes out, or a binary call (``P.RMA_BINARY`` first: the
        function gets the bytes after it; bytes it returns go back after the same byte); a
        raising function fails the call with a JSON error document (error, traceback) as
        its text. The Python API's trampoline (``pyapi.call``) is called on the slot itself
        (or on the segments of a gathered request, whose large ones its arguments keep)
        and its result returned in parts (``RmaExecutor`` sends them gathered or copies
        them into place)."""
        HandlerError = self._rma_handler_error  # imported by _rma_open (an import here costs ~5 us a call)
        cpus = self._rma_cpus
        if cpus and cpus is not getattr(threading.current_thread(), "faas_cpus", None):  # the same list: once
            os.sched_setaffinity(0, cpus)  # this thread's affinity
            threading.current_thread().faas_cpus = cpus
        segments = type(payload) is list  # a gathered request: its first segment has the head
        first = payload[0] if segments else payload
        binary = len(first) > 0 and first[0] == 0  # P.RMA_BINARY (an index, not a slice compare)
        if segments and not (binary and self.fn is pyapi.call):
            payload = first = memoryview(b"".join(payload))  # the other functions take one buffer
            segments = False
        with self.fn_lock:
            try:
                if binary and self.fn is pyapi.call:  # the Python API's trampoline reads the slot in place
                    value = pyapi.call_parts([first[1:], *payload[1:]] if segments else payload[1:])
                    if type(value) is list:
                        return P.RMA_BINARY + value[0] if len(value) == 1 else [P.RMA_BINARY, *value]
                    value_json = value_to_json(value)
                elif binary:
                    value = self.fn(bytes(payload[1:]))  # bytes, as over ZeroMQ (the slot is reused)
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        return P.RMA_BINARY + value
                    value_json = value_to_json(value)
                else:
                    value_json = value_to_json(self.fn(json.loads(bytes(payload))))
            except NotJSON as exc:
                raise HandlerError(json.dumps({"error": str(exc), "traceback": None})) from None
            except BaseException as exc:
                raise HandlerError(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                                               "traceback": traceback.format_exc(limit=20)})) from None
        return value_json.encode()

    def _rma_control(self, provider: str, r: Any) -> None:
        """Answer the RMA control socket here; start its serving thread once a slot is attached."""
        r._control()
        r.apply_ends()
        if r.leased and not self._rma_running(provider):
            t = threading.Thread(target=self._rma_serve, args=(provider, r), name=f"rma-{provider}", daemon=True)
            self.rma_threads[provider] = t
            t.start()

    def _rma_serve(self, provider: str, r: Any) -> None:
        try:
            if self._rma_cpus:  # this thread's affinity (a native function never returns to Python)
                os.sched_setaffinity(0, self._rma_cpus)
                threading.current_thread().faas_cpus = self._rma_cpus
            r.serve(poll=0.01, until_idle=True)
        except Exception:
            log.exception("RMA serving loop (%s) failed; hot calls use ZeroMQ", provider)
            self.rma_failed[provider] = "the serving loop failed"

    def _rma_end(self, token: Optional[str], reason: str) -> None:
        for r in self.rma.values():
            r.end(token, reason)


def _native_error_doc(exc: NativeFunctionError) -> str:
    """An RMA error result of a native function: the document _rma_handler sends."""
    return json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": None})
