"""The demo's function: a small computation that also says where it ran."""
import os
import socket


def collatz(payload):
    """Longest Collatz chain below payload["limit"], plus where the work happened."""
    best, best_len = 1, 1
    for start in range(1, int(payload["limit"])):
        n, steps = start, 1
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best_len:
            best, best_len = start, steps
    return {
        "i": payload["i"], "best": best, "length": best_len,
        "cpus": sorted(os.sched_getaffinity(0)), "host": socket.gethostname(),
        "job": os.environ.get("SLURM_FAAS_JOB_ID"),
    }
