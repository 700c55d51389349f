"""Trivial handlers for tests and benchmarks of the stand-alone RMA executor (not functions
anyone deploys): ``python -m faas_runtime.rma --entrypoint faas_runtime.rma.testing:sink``."""


def echo(payload: memoryview) -> memoryview:
    """Return the payload (round-trip latency; the executor's default entrypoint)."""
    return payload


def sink(payload: memoryview) -> bytes:
    """Take the payload, return nothing (bandwidth)."""
    return b""
