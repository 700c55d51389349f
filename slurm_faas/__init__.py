"""slurm_faas: run Python functions on the idle cores Slurm batch jobs lend.

The one import for users (docs/python.md)::

    from slurm_faas import Executor, lease

``Executor`` is a ``concurrent.futures.Executor`` (``submit``, ``map``, ``shutdown``;
futures whose ``cancel`` cancels the invocation), ``lease`` gives hot calls on a warm
executor, ``remote_memory`` a batch job's spare memory over RMA (slurm_faas/memory.py), and
the typed errors are the ones raised by them. Nothing else here is public.
"""
from __future__ import annotations

from .errors import (
    CallTimeout,
    FunctionError,
    FunctionTimedOut,
    LeaseEnded,
    LeaseError,
    LeaseUnavailable,
    PayloadTooLarge,
    PythonVersionMismatch,
    RemoteTraceback,
    RequestError,
    Unavailable,
)
from .executor import Executor, InvocationFuture
from .hot import PythonLease, lease
from .memory import RemoteMemoryLease, RemoteMemoryLost, RemoteMemoryRevoked, remote_memory

__all__ = ["CallTimeout", "Executor", "FunctionError", "FunctionTimedOut", "InvocationFuture", "LeaseEnded",
           "LeaseError", "LeaseUnavailable", "PayloadTooLarge", "PythonLease", "PythonVersionMismatch",
           "RemoteMemoryLease", "RemoteMemoryLost", "RemoteMemoryRevoked", "RemoteTraceback", "RequestError",
           "Unavailable", "lease", "remote_memory"]
