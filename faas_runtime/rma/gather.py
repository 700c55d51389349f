"""Messages in segments (``F_GATHER``): large parts read where they lie, at both ends.

A request or a result given as parts (``pyapi.encode_call_parts``: a pickle stream and the
buffers of the arrays it names) would otherwise be copied into one registered buffer by
its sender and copied out again by its receiver. Gathered, each large part is registered
where it lies and only described; the receiver reads it into fresh memory of its own,
which the unpickled value then keeps (``pyapi``: writable segments are taken, not
copied). The small parts travel inline, in the slot or the result buffer, as usual.

Body of a gathered message (after the 32-byte header, which carries ``F_GATHER`` and the
body's length)::

    count u32, 0 u32
    count x (length u64, address u64, key u64, remote u64)     segment table
    the inline segments' bytes, in order

The message is the concatenation of its segments in table order; an inline segment's
bytes follow the table, a remote one (``remote`` = 1) lies at address/key in the
sender's memory, registered until the receiver has read it (for a request: until its
result came; for a result: until the slot's next request).

Owns: the gathered body format and its two ends. May not touch: the header (wire.py),
slots and leases (server.py, client.py).
"""
from __future__ import annotations

import struct
from typing import Any, Optional

from faas_runtime.fabric import Endpoint, MemoryRegion

from .wire import put_parts

GATHER_MIN = 64 * 1024  # parts this large are read where they lie (below: inline costs less than a read)
_COUNT = struct.Struct("<II")
_ENTRY = struct.Struct("<QQQQ")


class BadGather(ValueError):
    """A gathered body whose table does not describe it."""


def pack(ep: Endpoint, parts: list, into: memoryview, at: int, room: int
         ) -> Optional[tuple[int, list[MemoryRegion]]]:
    """Write the gathered body of ``parts`` at ``into[at:]``. Returns its length and the
    registrations the peer reads (keep them open until it has), or None when the inline
    parts and the table need more than ``room`` bytes (nothing is registered then)."""
    views = [memoryview(p).cast("B") for p in parts]
    segments: list[Any] = []  # a large view (remote), or a list of small ones (one inline segment)
    for v in views:
        if v.nbytes >= GATHER_MIN:
            segments.append(v)
        elif segments and type(segments[-1]) is list:
            segments[-1].append(v)
        else:
            segments.append([v])
    table = _COUNT.size + _ENTRY.size * len(segments)
    inline = sum(v.nbytes for s in segments if type(s) is list for v in s)
    if table + inline > room:
        return None
    regions = [ep.register(s) for s in segments if type(s) is not list]
    _COUNT.pack_into(into, at, len(segments), 0)
    entry, data, remote = at + _COUNT.size, at + table, iter(regions)
    for s in segments:
        if type(s) is list:
            n = sum(v.nbytes for v in s)
            _ENTRY.pack_into(into, entry, n, 0, 0, 0)
            data = put_parts(into, data, s)
        else:
            r = next(remote)
            _ENTRY.pack_into(into, entry, r.size, r.base, r.key, 1)
        entry += _ENTRY.size
    return data - at, regions


def unpack(ep: Endpoint, peer: int, body: memoryview, timeout: float) -> list[memoryview]:
    """The segments of the gathered ``body`` (read from ``peer``): remote ones in fresh,
    writable memory of their own, inline ones as read-only views of ``body`` (valid as
    long as it is: copy what must outlive it)."""
    if body.nbytes < _COUNT.size:
        raise BadGather(f"a gathered body of {body.nbytes} bytes")
    count, _ = _COUNT.unpack_from(body, 0)
    data = _COUNT.size + _ENTRY.size * count
    if data > body.nbytes:
        raise BadGather(f"a table of {count} segments in {body.nbytes} bytes")
    entries = [_ENTRY.unpack_from(body, _COUNT.size + _ENTRY.size * i) for i in range(count)]
    if data + sum(e[0] for e in entries if not e[3]) != body.nbytes:
        raise BadGather("the inline segments do not fill the body")
    out, ro = [], body.toreadonly()
    for length, addr, key, remote in entries:
        if remote:
            if length == 0:
                raise BadGather("an empty remote segment")
            out.append(ep.read_fresh(length, peer, addr, key, timeout=timeout))
        else:
            out.append(ro[data: data + length])
            data += length
    return out
