"""Functions the way users get them wrong, for tests/integration/test_user_functions.py."""
import math
import sys


def boom(payload):
    print("about to look up the key")
    print("a warning on stderr", file=sys.stderr)
    return payload["missing_key"]


def nan(payload):
    return math.nan


def a_set(payload):
    return {1, 2}


def leak(payload):
    """What the agent's own environment lends a function run without a container: nothing."""
    try:
        import sqlalchemy
    except ImportError:
        return "isolated"
    return "leaked " + sqlalchemy.__file__
