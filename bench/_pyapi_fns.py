"""Functions the Python API benchmarks call by reference (the nodes import this module)."""


def echo(value):
    return value
