"""The Python API in one script (docs/python.md): run it where FAAS_COSCHEDULER and munge
reach the co-scheduler, with a batch job lending cores (sbatch --faas-share=cores=2).

    python3 docs/examples/python_api.py
"""
import math
import sys

from slurm_faas import Executor, FunctionError, lease


def collatz_steps(n):
    """Defined in __main__: goes by value (cloudpickle)."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> int:
    with Executor(cores=1, mem="256M", timeout=60) as ex:
        print("sqrt(2) =", ex.submit(math.sqrt, 2).result())            # by reference
        steps = list(ex.map(collatz_steps, range(1, 1001), chunksize=100))
        print("longest Collatz run below 1000:", max(steps))
        blob = ex.submit(bytes.upper, b"binary in, binary out").result()
        print(blob)
        try:
            ex.submit(math.sqrt, -1).result()
        except ValueError as exc:                                      # raised as itself
            print("the function failed:", exc, "(traceback from the node attached)")
        except FunctionError as exc:
            print("the function failed:", exc)
    with lease(collatz_steps, duration_s=60) as hot:                   # hot calls on a warm core
        print("hot:", [hot.call(n) for n in (27, 97, 871)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
