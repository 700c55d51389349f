"""Process, port and waiting helpers of the dev cluster (coscheduler.tools.devcluster); the
tests and benchmarks that drive a cluster wait with ``poll_until`` too."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class ClusterError(Exception):
    """The cluster could not be brought to the asked state; the message says where to look."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(check: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> Optional[T]:
    """``check()`` every ``interval_s`` until it returns something true, which is returned;
    None once ``timeout_s`` passed (on a monotonic clock). The caller raises its own error."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval_s)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, log_hint) -> None:
    if not poll_until(check, timeout_s):
        raise ClusterError(f"{what} not ready after {timeout_s:g} s; see {log_hint}")


def terminate(pid: int, timeout_s: float) -> None:
    """TERM, wait on a monotonic deadline, then KILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
