"""Hot calls with the Executor's data model: ``slurm_faas.lease``.

    with slurm_faas.lease(score, cores=1, duration_s=120) as hot:
        hot.call(array, weight=2)            # a Python call, its value (pickle protocol 5)

    with slurm_faas.lease("echo") as hot:  # a registered function, by name
        hot.call(b"raw bytes")             # bytes in, bytes out (JSON values as before)

A lease holds a warm executor of the function on lent cores for ``duration_s``; calls go
straight to it over ZeroMQ, without the queue (``faas_runtime.client``). For a Python
callable the leased function is the one ``Executor`` registers for the same resources,
and each call carries the callable and its arguments as opaque bytes.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from faas_runtime import pyapi
from faas_runtime.client import HotLease
from faas_runtime.client import lease as lease_function
from faas_runtime.queue_client import Client, user_address

from .functions import Resources, ensure_registered, function_spec, shipping


class PythonLease:
    """A lease of a Python callable: ``call(*args, **kwargs)`` runs it on the leased core."""

    def __init__(self, hot: HotLease, fn: Callable, by_value: bool):
        self.lease, self.fn, self._by_value = hot, fn, by_value

    def call(self, *args: Any, timeout_s: Optional[float] = None, **kwargs: Any) -> Any:
        parts = pyapi.encode_call_parts(self.fn, args, kwargs, self._by_value)
        return pyapi.decode_result(self.lease.call_parts(parts, timeout_s))

    def release(self) -> None:
        self.lease.release()

    def __enter__(self) -> "PythonLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lease(function: Union[str, Callable], *, endpoint: Optional[str] = None, munge_socket: Optional[str] = None,
          duration_s: float = 300.0, timeout_s: float = 60.0, call_timeout_s: float = 60.0, **options: Any
          ) -> Union[HotLease, PythonLease]:
    """Lease a warm executor: of a registered function (its name: calls take JSON values
    or bytes), or of a Python callable (calls take its arguments; ``options`` as the
    Executor's: cores, mem, timeout, container, ...)."""
    endpoint, munge_socket = user_address(endpoint, munge_socket)
    common = dict(endpoint=endpoint, munge_socket=munge_socket, duration_s=duration_s, timeout_s=timeout_s,
                  call_timeout_s=call_timeout_s)
    if isinstance(function, str):
        if options:
            raise TypeError("options (cores, mem, ...) are a registered function's own: update it instead")
        return lease_function(function, **common)
    res = Resources().with_options(options)
    ship = shipping(function, res.code_dir)
    spec = function_spec(res, ship.code_dir)
    with Client(endpoint, munge_socket, timeout_s=min(timeout_s, 30.0)) as client:
        ensure_registered(client, spec, ship.module_file)
    return PythonLease(lease_function(spec["name"], **common), function, ship.by_value)
