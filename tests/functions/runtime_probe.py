"""Functions the runtime tests register: identity, confinement, containers, eviction."""
import os
import sys
import time


def whoami(payload):
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
            "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid(), "python": sys.executable,
            "cgroup": open("/proc/self/cgroup").read(), "container": os.environ.get("CH_RUNNING") is not None,
            "code": os.path.dirname(os.path.abspath(__file__)), "env": sorted(os.environ), "echo": payload}


def hog(payload):
    """Allocate (and touch) memory until something stops us."""
    chunks = []
    for _ in range(int(payload or 10_000)):
        chunks.append(bytearray(8 << 20))
    return len(chunks)


def forkbomb(payload):
    """Fork until the kernel says no; the children wait to be killed."""
    n = 0
    try:
        while n < int(payload or 100_000):
            if os.fork() == 0:
                time.sleep(300)
                os._exit(0)
            n += 1
    except OSError as exc:
        return {"forked": n, "error": str(exc)}
    return {"forked": n, "error": None}


def sleep(payload):
    time.sleep(float(payload))
    return {"slept": payload, "pid": os.getpid(), "job": os.environ.get("SLURM_FAAS_JOB_ID")}


def spin(payload):
    """Burn CPU for payload seconds (the interference benchmark's guest load)."""
    end = time.monotonic() + float(payload)
    x = 0
    while time.monotonic() < end:
        x += 1
    return x


def echo(payload):
    return payload
