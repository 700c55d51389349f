"""slurm_faas: run Python functions on the idle cores Slurm batch jobs lend.

The one import for users (docs/python.md)::

    from slurm_faas import Executor, lease

``Executor`` is a ``concurrent.futures.Executor`` (``submit``, ``map``, ``shutdown``;
futures whose ``cancel`` cancels the invocation), ``lease`` gives hot calls on a warm
executor, and the typed errors are the ones raised by both. Nothing else here is public.
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

__all__ = ["CallTimeout", "Executor", "FunctionError", "FunctionTimedOut", "InvocationFuture", "LeaseEnded",
           "LeaseError", "LeaseUnavailable", "PayloadTooLarge", "PythonLease", "PythonVersionMismatch",
           "RemoteTraceback", "RequestError", "Unavailable", "lease"]
