"""Functions the Python API test (tests/integration/test_python_api.py) sends by reference."""
import os


def square(x):
    return x * x


def identity():
    return os.getuid(), os.getgid()


def echo_bytes(data):
    return bytes(reversed(data))


def fail(message):
    raise KeyError(message)
