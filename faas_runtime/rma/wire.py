"""The RMA wire: what the client and the executor write into each other's memory.

Every message, request or result, is ``header + body`` in a registered buffer, written
with ``fi_writedata``; its immediate data is ``slot << 16 | seq`` (fits the 4 bytes that
the smallest providers carry). Providers without remote CQ data signal with write + an
8-byte send instead (chosen in C when the endpoint opens, ``csrc/fabric_endpoint.c``;
sent by ``csrc/fabric_rma.c``).

Header (32 bytes, little endian): length u64, bulk address u64, bulk key u64, flags u32,
seq u32. Flags:

- ``F_BULK``: the body is not inline; it lies at address/key (registered where it lies)
  and the other side reads it with ``fi_read``;
- ``F_GATHER``: the body is inline and is a segment table with the small segments; the
  large ones lie registered in the sender's memory and the receiver reads each into
  memory of its own (``gather.py``: requests and results given as parts);
- ``F_ERROR``: the result is the error text, UTF-8;
- ``F_ENDED`` (with ``F_ERROR``): the lease of this slot ended; the text says why.

The event kinds and ``FF_INVOKE_MORE`` mirror ``csrc/fabric.h``.

Owns: the RMA header format. May not touch: endpoints (server.py, client.py).
"""
from __future__ import annotations

import struct
from typing import Iterable

HEADER = struct.Struct("<QQQII")
HSIZE = HEADER.size  # 32
F_BULK = 1
F_ERROR = 2
F_ENDED = 4
F_GATHER = 8
DEFAULT_SLOT_SIZE = 64 * 1024
DEFAULT_SLOTS = 16
EV_NONE, EV_DATA, EV_TX_ERROR, EV_RX_ERROR, EV_NATIVE = 0, 1, 2, 3, 4
FF_INVOKE_MORE = -1000000  # ff_invoke: the call needs Python to finish it


def put_parts(into: memoryview, at: int, parts: Iterable) -> int:
    """Copy ``parts`` (bytes-like) one after another into ``into`` from ``at``; returns
    where they end. How every sender lays a message given in parts into its buffer."""
    for part in parts:
        part = memoryview(part).cast("B")
        into[at: at + part.nbytes] = part
        at += part.nbytes
    return at
