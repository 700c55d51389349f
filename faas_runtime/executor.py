"""Run one invocation: pin to the lent CPUs, import the user's function, call it.

The agent starts this module as a fresh process, already as the function owner's uid,
with a clean environment. The pinning happens here, before any user code is imported,
so the function never runs outside the lent CPUs; the result (or the error) goes to a
JSON file the agent reads when the process has exited.

    python -m faas_runtime.executor --cpus 1,3 --entrypoint mod:func --code DIR \\
        --input payload.json --output result.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback


def _write(path: str, document: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(document, fh)
    os.replace(tmp, path)


def load_callable(entrypoint: str, code_dir: str):
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entrypoint must be 'module:function', got {entrypoint!r}")
    sys.path.insert(0, code_dir)
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entrypoint} is not callable")
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-executor")
    ap.add_argument("--cpus", required=True, help="OS CPU ids, comma separated")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--code", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)

    cpus = {int(c) for c in args.cpus.split(",")}
    os.sched_setaffinity(0, cpus)
    try:
        fn = load_callable(args.entrypoint, args.code)
        with open(args.input) as fh:
            payload = json.load(fh)
        value = fn(payload)
        value_json = json.dumps(value)
    except BaseException as exc:  # the function's failure is a result, not a crash
        _write(args.output, {
            "outcome": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=20),
            "cpus": sorted(os.sched_getaffinity(0)),
        })
        return 0
    _write(args.output, {"outcome": "ok", "value_json": value_json, "cpus": sorted(os.sched_getaffinity(0))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
