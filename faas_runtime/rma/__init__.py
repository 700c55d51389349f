"""Hot invocations over libfabric RMA: an executor's registered request ring and its client.

Set-up goes over ZeroMQ (the executor binds a ROUTER; ``fabric-attach`` trades
endpoint names, addresses and keys and leases one ring slot to the client); after
that every invocation is one-sided RMA:

1. the client writes ``header + payload`` into its slot of the executor's ring
   with ``fi_writedata``; the immediate data is ``slot << 16 | seq``;
2. the executor, busy-polling its completion queue in C, sees the data, runs
   the function on a memoryview of the slot (no copy), and writes
   ``header + result`` into the client's registered result buffer with the
   same immediate data;
3. the client, busy-polling in C inside the same call that posted its write,
   returns the result.

Bulk: a payload larger than the slot is not copied: the client registers it
where it lies and sends only a header; the executor reads it with ``fi_read``.
A result larger than the client's result buffer stays registered at the
executor and the client reads it (released at the slot's next request).
Requests and results given as parts (the Python API's: a pickle stream and
array buffers) go gathered: large parts registered where they lie, read by the
other side into fresh memory of its own, small ones inline.

Modules: ``wire`` (the header and its flags), ``gather`` (messages in segments), ``server`` (:class:`RmaExecutor`,
:class:`NativeHandler` for the C loop), ``client`` (:class:`RmaClient`), ``__main__``
(``python -m faas_runtime.rma``, a stand-alone executor) and ``testing`` (trivial
handlers for its tests and benchmarks). The names below are the package's API.
"""
from .client import AttachRefused, ExecutorLost, RemoteFunctionError, RmaClient, RmaLeaseEnded
from .server import Handler, HandlerError, NativeHandler, RmaExecutor

__all__ = ["AttachRefused", "ExecutorLost", "Handler", "HandlerError", "NativeHandler", "RemoteFunctionError",
           "RmaClient", "RmaExecutor", "RmaLeaseEnded"]
