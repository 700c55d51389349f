"""Run as a real user by tests/integration/test_python_api.py: the Python API end to end.
Prints one JSON document of what it saw."""
import json
import os
import sys

import pyapi_mod

import slurm_faas


def offset(x, k=100):  # defined in __main__: goes by value (cloudpickle)
    return x + k


def main():
    out = {}
    with slurm_faas.Executor(timeout=60, mem="128M") as ex:
        out["uid_gid"] = list(ex.submit(pyapi_mod.identity).result(timeout=120))
        out["map"] = list(ex.map(pyapi_mod.square, range(40), chunksize=7))
        out["by_value"] = ex.submit(offset, 1, k=2).result(timeout=120)
        blob = os.urandom(300_000)
        out["bytes_ok"] = ex.submit(pyapi_mod.echo_bytes, blob).result(timeout=120) == blob[::-1]
        try:
            ex.submit(pyapi_mod.fail, "nope").result(timeout=120)
        except KeyError as exc:
            out["error"] = [type(exc).__name__, str(exc), "pyapi_mod.py" in (exc.remote_traceback or "")]
        done = ex.submit(pyapi_mod.square, 9)
        done.result(timeout=120)
        ids = [done.invocation_id]
    with slurm_faas.Executor() as again:  # a new connection collects by id
        out["attached"] = [f.result(timeout=120) for f in again.attach(ids)]
    with slurm_faas.lease(pyapi_mod.square, mem="128M", timeout=30, duration_s=60) as hot:
        out["hot"] = [hot.call(n) for n in range(3)]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
