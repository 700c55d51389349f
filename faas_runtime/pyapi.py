"""The Python API's function on the nodes, and the byte format of its calls and results.

``slurm_faas.Executor`` registers one function per set of resources with the entrypoint
``faas_runtime.pyapi:call`` (``ENTRYPOINT``): this trampoline. Its payload is a call this
module encodes (the callable, by reference or by value, and its arguments), its return
value the encoded result. Both are opaque bytes to the co-scheduler and the agent: they
store and forward them, never decode them. Pickle only crosses between a user and their
own functions: the payload is unpickled by the executor, which runs as the user who
submitted it, and the result by that user's client.

A call or a result is one bytes object::

    MAGIC (4 bytes)  b"SFPY"
    header (4 bytes) format version, Python major, Python minor, flags
    body             pickle protocol 5 (cloudpickle when the callable goes by value)

The header is read before anything is unpickled: a by-value callable (its bytecode) runs
only on the same Python minor version, so a mismatch is refused with a clear error
(``PythonVersionMismatch``) instead of a crash inside pickle. Flags: ``BY_VALUE`` (the
body needs cloudpickle on the node), ``JSON_RESULT`` (the client asks for the result as a
JSON document carrying base64, for a co-scheduler that stores only JSON results),
``OUT_OF_BAND`` (large buffers, numpy arrays, follow the pickle stream instead of being
inside it: pickle protocol 5 out-of-band buffers, ``_pack_parts``).

Bytes in, bytes out: when the executor passes the payload as bytes (a binary invocation)
the result is bytes. A JSON payload ``{"sfpy": "<base64>"}`` is accepted too (the CLI's
world, and hot calls made with JSON) and answered as JSON the same way.

A raising function fails the invocation (the co-scheduler keeps its error and traceback);
the client raises the same exception type when it is a built-in one (``remote_error``).
"""
from __future__ import annotations

import ast
import base64
import builtins
import pickle
import struct
import sys
from typing import Any, Callable, Optional

ENTRYPOINT = "faas_runtime.pyapi:call"
MAGIC = b"SFPY"
FORMAT = 1
BY_VALUE = 0x01
JSON_RESULT = 0x02
OUT_OF_BAND = 0x04  # the body is: buffer count (u32), sizes (u64: the stream's, each buffer's), stream, buffers
_OOB_COUNT = struct.Struct("!I")
JSON_KEY = "sfpy"
_HEADER = struct.Struct("!4sBBBB")


class PythonVersionMismatch(RuntimeError):
    """The client's and the node's Python cannot exchange this call."""


class BadCall(ValueError):
    """Bytes that are not a call or a result of this format."""


_HEADERS = [_HEADER.pack(MAGIC, FORMAT, sys.version_info[0], sys.version_info[1], f) for f in range(8)]


def _header(flags: int) -> bytes:
    return _HEADERS[flags] if flags < 8 else _HEADER.pack(MAGIC, FORMAT, *sys.version_info[:2], flags)


def read_header(data: bytes) -> tuple[tuple[int, int], int, memoryview]:
    """(Python version of the writer, flags, body) of an encoded call or result."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise BadCall(f"{len(view)} bytes: not a slurm_faas call or result")
    magic, fmt, major, minor, flags = _HEADER.unpack_from(view)
    if magic != MAGIC or fmt != FORMAT:
        raise BadCall(f"not a slurm_faas call or result of format {FORMAT} (magic {bytes(magic)!r}, format {fmt})")
    return (major, minor), flags, view[_HEADER.size:]


_MINE = tuple(sys.version_info[:2])
# Magic, format and this Python's major version: bytes that begin so need no version check
# beyond the flags (``_plain_flags``).
_SAME_MAJOR = MAGIC + bytes([FORMAT, sys.version_info[0]])


def _plain_flags(data: Any) -> Optional[int]:
    """The flags of one contiguous call or result that a Python of this major version wrote
    (no version check is then due but the flags' own), else None: the short paths of
    :func:`decode_result` and :func:`call_parts` (the hot call's case)."""
    if type(data) is list or len(data) < _HEADER.size or data[:6] != _SAME_MAJOR:
        return None
    return data[7]


def check_version(writer: tuple[int, int], by_value: bool, here: str) -> None:
    mine = _MINE
    if writer[0] != mine[0] or (by_value and writer != mine):
        raise PythonVersionMismatch(
            f"the client runs Python {writer[0]}.{writer[1]} and {here} runs Python {mine[0]}.{mine[1]}: "
            + ("a function sent by value (defined in __main__ or a notebook) needs the same minor version; "
               "put it in a module the nodes can import, or use the nodes' Python (or an image with it)"
               if by_value else "use the same Python major version"))


# -- the client's side --------------------------------------------------------------------

def encode_call(fn: Callable, args: tuple, kwargs: dict, by_value: bool, json_result: bool = False) -> bytes:
    """A call of ``fn(*args, **kwargs)``: ``fn`` by reference (module and name: plain
    pickle) or by value (cloudpickle)."""
    return b"".join(encode_call_parts(fn, args, kwargs, by_value, json_result))


def encode_call_parts(fn: Callable, args: tuple, kwargs: dict, by_value: bool, json_result: bool = False) -> list:
    """:func:`encode_call` as the parts its bytes are the concatenation of: large buffers
    (a numpy array's memory) are parts of their own, not copied, so a transport can copy
    them once, where they go (faas_runtime.rma: into its registered memory)."""
    body = (fn, args, kwargs)
    flags = JSON_RESULT if json_result else 0
    if not by_value:
        try:
            return _pack_parts(flags, pickle.dumps, body)
        except _UNPICKLABLE:
            pass  # an argument without an importable home (a lambda, a local class): by value
    return _pack_parts(flags | BY_VALUE, require_cloudpickle().dumps, body)


# What plain pickle raises for an object it can only take by value (cloudpickle can).
_UNPICKLABLE = (pickle.PicklingError, AttributeError, TypeError)


def encode_value(value: Any) -> bytes:
    """A result: ``value`` pickled plainly, else by value with cloudpickle when it is a
    local class, a lambda or a closure (its reader needs cloudpickle installed)."""
    return b"".join(encode_value_parts(value))


def encode_value_parts(value: Any) -> list:
    """:func:`encode_value` as parts (see :func:`encode_call_parts`)."""
    try:
        return _pack_parts(0, pickle.dumps, value)
    except _UNPICKLABLE:
        try:
            import cloudpickle
        except ImportError:
            cloudpickle = None
        if cloudpickle is None:
            raise  # the pickling error: nothing else can take it
        return _pack_parts(0, cloudpickle.dumps, value)


def _pack_parts(flags: int, dumps: Callable, obj: Any) -> list:
    """Header and pickle (protocol 5) of ``obj``, as parts. Large buffers (numpy arrays,
    PickleBuffer) go out of band, after the pickle stream (flag ``OUT_OF_BAND``), each a
    part of its own (the object's memory, not a copy), where pickling them in band costs
    several copies (a 1 MiB array: 2 ms in band, 0.2 ms here)."""
    buffers: list = []
    stream = dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return [_header(flags) + stream]
    raws = [b.raw() for b in buffers]  # contiguous: numpy gives out of band only those
    sizes = _OOB_COUNT.pack(len(raws)) + struct.pack(f"!{len(raws) + 1}Q", len(stream), *(r.nbytes for r in raws))
    return [b"".join([_header(flags | OUT_OF_BAND), sizes, stream]), *raws]


def _unpack(flags: int, body: Any, owned: bool = False) -> Any:
    """The object ``_pack_parts`` wrote, from ``body`` (memory) or from its segments (a
    list: a transport's gathered receive, ``faas_runtime.rma.gather``). Out-of-band
    buffers are copied once into writable memory (a numpy array comes back writable, as an
    in-band one does), except memory given to keep: ``owned`` (``body`` is writable memory
    nobody else uses, a fresh receive buffer), or, in a list, a writable segment that is
    exactly the buffer (fresh memory the transport read it into); those are taken as they
    are, with no copy."""
    if not flags & OUT_OF_BAND:
        return pickle.loads(body if type(body) is not list else b"".join(body))
    reader = _Segments(body if type(body) is list else [body], owned or type(body) is list)
    try:
        (count,) = _OOB_COUNT.unpack(reader.take(_OOB_COUNT.size)[0])
        if count > reader.left // 8:
            raise struct.error("more buffers than bytes")
        sizes = struct.unpack(f"!{count + 1}Q", reader.take(8 * (count + 1))[0])
    except struct.error:
        raise BadCall("a truncated slurm_faas call or result (its buffer sizes)") from None
    if sum(sizes) != reader.left:
        raise BadCall(f"a slurm_faas call or result whose parts say {sum(sizes)} bytes after its sizes, "
                      f"not {reader.left}")
    stream = reader.take(sizes[0])[0]
    buffers = []
    for size in sizes[1:]:
        view, keep = reader.take(size)
        buffers.append(view if keep else bytearray(view))
    return pickle.loads(stream, buffers=buffers)


class _Segments:
    """Reads bytes in order across segments: ``take(n)`` is a view when the n bytes lie in
    one segment (a copy that joins them otherwise), and whether it may be kept."""

    def __init__(self, segments: list, owned: bool):
        self._segments = [memoryview(s).cast("B") for s in segments]
        self._owned = owned
        self._i = self._at = 0
        self.left = sum(s.nbytes for s in self._segments)

    def take(self, n: int) -> tuple[Any, bool]:
        if n > self.left:
            raise struct.error("past the end")
        self.left -= n
        while self._i < len(self._segments) and self._at == self._segments[self._i].nbytes:
            self._i, self._at = self._i + 1, 0
        if n == 0:
            return memoryview(b""), False
        seg = self._segments[self._i]
        if self._at + n <= seg.nbytes:  # within one segment: a view
            view, self._at = seg[self._at: self._at + n], self._at + n
            return view, self._owned and not seg.readonly
        pieces = []
        while n:
            seg = self._segments[self._i]
            k = min(n, seg.nbytes - self._at)
            pieces.append(seg[self._at: self._at + k])
            n, self._at = n - k, self._at + k
            if self._at == seg.nbytes:
                self._i, self._at = self._i + 1, 0
        return memoryview(b"".join(pieces)), False


def require_cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        raise ImportError("this function must go by value (it is defined in __main__, a notebook, or a module the "
                          "nodes cannot import), which needs cloudpickle: pip install 'slurm-faas[python]'") from None
    return cloudpickle


def decode_result(data: Any, owned: bool = False) -> Any:
    """The value a call returned: its result bytes (``owned``: writable memory the value
    may keep), or their segments (a list, see :func:`_unpack`)."""
    flags = _plain_flags(data)
    if flags is not None and not flags & OUT_OF_BAND:
        return pickle.loads(memoryview(data)[_HEADER.size:])  # one pickle: the small call's case, in short
    writer, flags, body = _read_segments(data)
    check_version(writer, False, "this client")
    return _unpack(flags, body, owned and type(body) is not list and not body.readonly)


def _read_segments(data: Any) -> tuple[tuple[int, int], int, Any]:
    """:func:`read_header` of bytes, or of segments (a list): its body is then the list
    of the segments after the header."""
    if type(data) is not list:
        return read_header(data)
    first = memoryview(data[0]).cast("B") if data else memoryview(b"")
    if first.nbytes < _HEADER.size:  # the header spans segments (not as our transports send)
        return read_header(b"".join(data))
    writer, flags, body = read_header(first)
    return writer, flags, [body, *data[1:]]


def from_json(doc: Any) -> bytes:
    """The bytes a JSON document ``{"sfpy": base64}`` carries."""
    if not isinstance(doc, dict) or not isinstance(doc.get(JSON_KEY), str):
        raise BadCall("not a slurm_faas JSON document ({'sfpy': base64 text})")
    return base64.b64decode(doc[JSON_KEY], validate=True)


def to_json(data: bytes) -> dict:
    return {JSON_KEY: base64.b64encode(data).decode("ascii")}


class RemoteTraceback(Exception):
    """The traceback of a function's failure on its node (the ``__cause__`` of the exception
    ``Future.result()`` raises, as ``concurrent.futures.ProcessPoolExecutor`` does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def remote_error(error: Optional[str], tb: Optional[str], fallback: Callable[[str, Optional[str]], BaseException]
                 ) -> BaseException:
    """The exception a failed call raises in the client: the function's own built-in type
    (``ValueError: bad``), else ``fallback(message, traceback)``; the remote traceback is
    its ``__cause__`` and its ``remote_traceback``."""
    error = error or "the function failed"
    name, sep, message = error.partition(": ")
    cls = getattr(builtins, name, None) if sep else None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        if cls is KeyError:  # str(KeyError("k")) is "'k'": take the key back
            try:
                message = ast.literal_eval(message)
            except (ValueError, SyntaxError):
                pass
        try:
            exc: BaseException = cls(message)
        except Exception:
            exc = fallback(error, tb)
    else:
        exc = fallback(error, tb)
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


# -- the node's side (runs in the executor, as the user) ------------------------------------

def call(payload: Any) -> Any:
    """The trampoline: run the encoded call; return the encoded result (bytes for a bytes
    payload, a JSON document for a JSON one or when the call asks for it)."""
    as_json = not isinstance(payload, (bytes, bytearray, memoryview))
    out = call_parts(from_json(payload) if as_json else payload)
    if isinstance(out, dict):
        return out
    out = b"".join(out)
    return to_json(out) if as_json else out


def call_parts(data: Any) -> Any:
    """:func:`call` on bytes-like ``data`` (read only during the call: the RMA executor
    passes a view of its receive buffer, no copy) or on its segments (a list: a gathered
    receive, whose fresh segments the arguments keep, see :func:`_unpack`), the result as
    parts (:func:`encode_value_parts`), or a JSON document when the call asks for one."""
    if _plain_flags(data) == 0:
        fn, args, kwargs = pickle.loads(memoryview(data)[_HEADER.size:])  # by reference, in band: in short
        return encode_value_parts(fn(*args, **kwargs))
    writer, flags, body = _read_segments(data)
    by_value = bool(flags & BY_VALUE)
    check_version(writer, by_value, "the node's function")
    if by_value:
        require_cloudpickle()  # its pickles name cloudpickle's helpers
    fn, args, kwargs = _unpack(flags, body)
    out = encode_value_parts(fn(*args, **kwargs))
    return to_json(b"".join(out)) if flags & JSON_RESULT else out


def call_chunk(fn: Callable, items: list) -> list:
    """``Executor.map`` with ``chunksize`` > 1: one invocation runs ``fn`` over a chunk."""
    return [fn(*args) for args in items]
