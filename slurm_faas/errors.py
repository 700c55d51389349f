"""The errors users of ``slurm_faas`` catch, each defined once where it is raised.

- ``FunctionError``: the function raised an exception that is not a built-in one (a
  built-in one, e.g. ``ValueError``, is raised as itself); ``remote_traceback`` holds its
  traceback on the node, also the ``__cause__`` (``RemoteTraceback``).
- ``FunctionTimedOut``: the call ran past its ``timeout``.
- ``PythonVersionMismatch``: the client's and the node's Python cannot exchange the call.
- ``PayloadTooLarge``: the call's pickled arguments are above ``max_payload_bytes``.
- ``RequestError``: the co-scheduler refused a request (``code``); ``Unavailable``: no answer.
- ``LeaseError`` and its kinds (``LeaseUnavailable``, ``LeaseEnded``, ``CallTimeout``): hot calls.
"""
from __future__ import annotations

from faas_runtime.client import CallTimeout, FunctionError, LeaseEnded, LeaseError, LeaseUnavailable
from faas_runtime.pyapi import PythonVersionMismatch, RemoteTraceback
from faas_runtime.queue_client import PayloadTooLarge, RequestError, Unavailable


class FunctionTimedOut(FunctionError, TimeoutError):
    """The call ran past its timeout (the invocation TIMED_OUT)."""


__all__ = ["CallTimeout", "FunctionError", "FunctionTimedOut", "LeaseEnded", "LeaseError", "LeaseUnavailable",
           "PayloadTooLarge", "PythonVersionMismatch", "RemoteTraceback", "RequestError", "Unavailable"]
