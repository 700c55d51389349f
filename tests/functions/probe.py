"""Functions the tests register. Each reports where it ran, so tests can check pinning."""
import os
import time


def where(payload):
    return {"echo": payload, "cpus": sorted(os.sched_getaffinity(0)), "uid": os.getuid(),
            "job": os.environ.get("SLURM_FAAS_JOB_ID")}


def square(payload):
    return {"square": payload["n"] ** 2, "cpus": sorted(os.sched_getaffinity(0))}


def sleepy(payload):
    time.sleep(float(payload))
    return "slept"


def boom(payload):
    raise RuntimeError(f"boom {payload}")
