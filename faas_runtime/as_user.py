"""Look at a user's files as that user, never as root.

Root (the agent, the co-scheduler) must not open, read or even probe for a path a user
names or controls (``/root``, ``/etc/shadow``, a FIFO that blocks forever, a symlink
swapped in between a check and a use); OpenSSH reads a user's ``authorized_keys`` with
the user's uid for the same reason. ``call_as`` runs a small function in a forked child
that first drops to the user (supplementary groups, gid, uid, as initgroups gives them);
the child's exception text comes back through a pipe. The child does syscalls only, then
``_exit``s; it is killed if it takes longer than ``timeout_s``.
"""
from __future__ import annotations

import os
import pwd
import signal
import time
from typing import Any, Callable, Optional


class NoSuchUser(LookupError):
    pass


def account_of(uid: int) -> tuple[int, list[int]]:
    """The primary gid and every group of ``uid`` from this host's user database."""
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        raise NoSuchUser(f"uid {uid} has no account on this host") from None
    return account.pw_gid, os.getgrouplist(account.pw_name, account.pw_gid)


def can_switch() -> bool:
    """Only root can act as another user."""
    return os.geteuid() == 0


def call_as(uid: int, fn: Callable[..., Any], *args: Any, timeout_s: float = 10.0) -> Optional[str]:
    """Run ``fn(*args)`` as ``uid``; None if it returned, else why it raised (its message)."""
    gid, groups = account_of(uid)
    switch = os.geteuid() != uid  # an unprivileged agent looks at its own user's files as itself
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, call, report, _exit (never return into the caller)
        status = 1
        try:
            os.close(rfd)
            if switch:
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            fn(*args)
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            try:
                os.write(wfd, str(exc).encode(errors="replace")[:4000] or type(exc).__name__.encode())
            except OSError:
                pass
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"the check as uid {uid} did not finish in {timeout_s:g} s"
            time.sleep(0.0005)
        message = os.read(rfd, 4096).decode(errors="replace")
    finally:
        os.close(rfd)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message or f"the check as uid {uid} failed"
