"""What the executor sends for a call: strict JSON values, bounded tracebacks, and the
call's own stdout and stderr (fd level: print, C code and children alike)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from faas_runtime import protocol as P
from faas_runtime.executor_values import NotJSON, value_to_json


@pytest.mark.parametrize("value,why", [
    ({1, 2}, "Object of type set is not JSON serializable"),
    (math.nan, "Out of range float values are not JSON compliant"),
    ([1, math.inf], "Out of range float values"),
])
def test_values_that_are_not_json_say_so(value, why):
    with pytest.raises(NotJSON, match="the return value is not JSON") as info:
        value_to_json(value)
    assert why in str(info.value)


def test_a_value_above_the_bound_is_refused(monkeypatch):
    monkeypatch.setattr(P, "MAX_RESULT_BYTES", 10)
    assert value_to_json([1, 2]) == "[1, 2]"
    with pytest.raises(NotJSON, match="at most 10 are kept"):
        value_to_json("x" * 20)


CAPTURE = r"""
import json, os, subprocess, sys
from faas_runtime.output_capture import OutputCapture


def mixed():
    print("from python")
    sys.stderr.write("to stderr\n")
    os.write(1, b"from fd 1\n")
    subprocess.run(["echo", "from a child"], check=True)


cap = OutputCapture(limit=64)
out = []
for call in (mixed, lambda: print("z" * 100), lambda: None):
    cap.start()
    call()
    out.append(cap.stop())
print(json.dumps(out))
"""


def test_capture_takes_print_c_and_children_and_keeps_the_end():
    """In a process of its own: pytest replaces sys.stdout, as no executor does."""
    import json

    run = subprocess.run([sys.executable, "-c", CAPTURE], capture_output=True, text=True, check=True)
    first, long, empty = json.loads(run.stdout)
    assert first == "from python\nto stderr\nfrom fd 1\nfrom a child\n"
    assert long.startswith("[... 37 earlier bytes not kept ...]\n") and long.endswith("z" * 63 + "\n")
    assert empty == ""  # each call starts empty
