"""The batch job of the memory-guard test and benchmark (run with /usr/bin/python3 inside a
Slurm job): waits for a go file, then allocates and touches memory in steps up to a share
of its --mem, holds it, frees most of it and lingers; prints one JSON line per event.

    memory_job.py GO_FILE STEP_MB TOP_PERCENT HOLD_S LINGER_S
"""
import json
import os
import sys
import time


def say(**fields):
    print(json.dumps({"t": time.time(), **fields}), flush=True)


def job_memory_cgroup():
    """The job's memory cgroup (v1: .../job_<id> above this task's step_*/task_*), or None."""
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        if "memory" in controllers.split(","):
            parts = path.split("/")
            for i, part in enumerate(parts):
                if part.startswith("job_"):
                    return "/sys/fs/cgroup/memory" + "/".join(parts[:i + 1])
    return None


def cgroup_value(cg, name):
    try:
        return int(open(f"{cg}/{name}").read())
    except (OSError, TypeError, ValueError):
        return None


def main():
    go, step_mb, top, hold_s, linger_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), \
        float(sys.argv[5])
    mem_mb = int(os.environ["SLURM_MEM_PER_NODE"])
    status = open("/proc/self/status").read()
    say(event="start", mem_mb=mem_mb, cpus=[ln.split()[1] for ln in status.splitlines()
                                            if ln.startswith("Cpus_allowed_list")][0],
        kept=os.environ.get("SLURM_FAAS_KEPT_CPUS"), bound=os.environ.get("SLURM_FAAS_BOUND"),
        omp=os.environ.get("OMP_NUM_THREADS"))
    while not os.path.exists(go):
        time.sleep(0.05)
    blocks, total = [], 0
    target = int(mem_mb * top / 100)
    while total < target:
        n = min(step_mb, target - total)
        t0 = time.monotonic()
        block = bytearray(n << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        blocks.append(block)
        total += n
        say(event="step", total_mb=total, step_s=time.monotonic() - t0)
    time.sleep(hold_s)
    del blocks[1:]
    cg = job_memory_cgroup()
    say(event="freed", total_mb=len(blocks[0]) >> 20, cgroup=cg, failcnt=cgroup_value(cg, "memory.failcnt"),
        limit=cgroup_value(cg, "memory.limit_in_bytes"), max_usage=cgroup_value(cg, "memory.max_usage_in_bytes"))
    time.sleep(linger_s)
    say(event="end")


if __name__ == "__main__":
    main()
