"""Handlers of the stand-alone RMA executor for tests/integration/test_rma_parts.py."""
import pickle

from faas_runtime import pyapi


def thirds(payload):
    """The payload back, as three parts (the executor sends their concatenation)."""
    data = bytes(payload)
    k = len(data) // 3
    return [data[:k], data[k:2 * k], data[2 * k:]]


def trampoline(payload):
    """The Python API's trampoline as the executor calls it over RMA: on the slot, parts out."""
    return pyapi.call_parts(payload)


class Blob:
    """Pickles its buffer out of band, as a numpy array does (protocol 5)."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return Blob, (pickle.PickleBuffer(self.data),)


def double(blob):
    return Blob(bytearray(blob.data) * 2)


def echo(value):
    return value


KEPT = []  # arguments a function keeps between calls (the executor must not reuse their memory)


def keep(blob):
    """Keeps its argument; says how its buffer came: the receive memory itself (a
    memoryview: gathered, no copy) or a copy (a bytearray)."""
    KEPT.append(blob)
    return len(KEPT), type(blob.data).__name__


def kept():
    return [bytes(b.data) for b in KEPT]
