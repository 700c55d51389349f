"""Functions of the memory-guard tests: hold lent memory for a while, report where they ran."""
import os
import time


def hold(payload):
    """Touch ``mb`` MiB and keep them for ``s`` seconds."""
    mb, seconds = int(payload["mb"]), float(payload["s"])
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return {"cpus": sorted(os.sched_getaffinity(0)), "job": os.environ.get("SLURM_FAAS_JOB_ID"), "mb": mb}
