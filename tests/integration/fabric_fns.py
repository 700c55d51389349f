"""Functions the RMA tests run on an executor (loaded with --code this directory)."""
import hashlib
import time


def digest_echo(payload):
    """sha256 of what the executor received, then the payload itself."""
    return hashlib.sha256(payload).digest() + bytes(payload)


def slow(payload):
    time.sleep(float(bytes(payload) or b"3"))
    return b"late"


def boom(payload):
    raise ValueError("boom from the executor")
