"""Functions written by a hostile user (tests/adversarial): each tries to make the root
agent act on a path it controls, or records how often it ran."""
import os
import sys
import time


def shadow_via_log(payload):
    """Replace this executor's output.log with a link to /etc/shadow and die without a
    result: an agent that reads the log by name would return shadow as the error text."""
    os.unlink("output.log")
    os.symlink("/etc/shadow", "output.log")
    sys.stdout.flush()
    os._exit(3)


def ctl_dir_writable(payload):
    """Can the function put anything beside its control socket (to swap it for a link)?"""
    control = next(a for a in _argv() if a.startswith("ipc://"))[len("ipc://"):]
    try:
        os.symlink("/run/munge/munge.socket.2", os.path.join(os.path.dirname(control), "evil"))
        return {"writable": True}
    except OSError as exc:
        return {"writable": False, "error": exc.strerror}


def record(payload):
    """Append this invocation's key to a log (one line per run), then take a while."""
    with open(payload["log"], "a") as fh:
        fh.write(f"{payload['key']}\n")
    time.sleep(float(payload.get("s", 0)))
    return payload["key"]


def _argv():
    with open("/proc/self/cmdline", "rb") as fh:
        return fh.read().decode().split("\0")
