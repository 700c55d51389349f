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
JSON document carrying base64, for a co-scheduler that stores only JSON results).

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
JSON_KEY = "sfpy"
_HEADER = struct.Struct("!4sBBBB")


class PythonVersionMismatch(RuntimeError):
    """The client's and the node's Python cannot exchange this call."""


class BadCall(ValueError):
    """Bytes that are not a call or a result of this format."""


def _header(flags: int) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT, sys.version_info[0], sys.version_info[1], flags)


def read_header(data: bytes) -> tuple[tuple[int, int], int, memoryview]:
    """(Python version of the writer, flags, body) of an encoded call or result."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise BadCall(f"{len(view)} bytes: not a slurm_faas call or result")
    magic, fmt, major, minor, flags = _HEADER.unpack(view[:_HEADER.size])
    if magic != MAGIC or fmt != FORMAT:
        raise BadCall(f"not a slurm_faas call or result of format {FORMAT} (magic {bytes(magic)!r}, format {fmt})")
    return (major, minor), flags, view[_HEADER.size:]


def check_version(writer: tuple[int, int], by_value: bool, here: str) -> None:
    mine = tuple(sys.version_info[:2])
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
    flags = (BY_VALUE if by_value else 0) | (JSON_RESULT if json_result else 0)
    body = (fn, args, kwargs)
    if by_value:
        cloudpickle = require_cloudpickle()
        data = cloudpickle.dumps(body, protocol=5)
    else:
        data = pickle.dumps(body, protocol=5)
    return _header(flags) + data


def require_cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        raise ImportError("this function must go by value (it is defined in __main__, a notebook, or a module the "
                          "nodes cannot import), which needs cloudpickle: pip install 'slurm-faas[python]'") from None
    return cloudpickle


def decode_result(data: bytes) -> Any:
    """The value a call returned (its result bytes)."""
    writer, _flags, body = read_header(data)
    check_version(writer, False, "this client")
    return pickle.loads(body)


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
    data = from_json(payload) if as_json else payload
    writer, flags, body = read_header(data)
    by_value = bool(flags & BY_VALUE)
    check_version(writer, by_value, "the node's function")
    if by_value:
        require_cloudpickle()  # its pickles name cloudpickle's helpers
    fn, args, kwargs = pickle.loads(body)
    out = _header(0) + pickle.dumps(fn(*args, **kwargs), protocol=5)
    return to_json(out) if as_json or flags & JSON_RESULT else out


def call_chunk(fn: Callable, items: list) -> list:
    """``Executor.map`` with ``chunksize`` > 1: one invocation runs ``fn`` over a chunk."""
    return [fn(*args) for args in items]
