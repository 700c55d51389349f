"""Why an invocation stays QUEUED, as squeue gives a job's pending reason.

Read only, and only when a user asks (``status``, ``list``): the lends whose agents hold a
session, the function's shape (cores, memory, timeout) and the user's running quota are
checked in the order a user can act on them. The placement itself is
coscheduler/scheduler.py's; this module only explains what it cannot do.

May not touch: anything it reads (it never writes), placement.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

from . import db as D

NO_LEND = "no lend: no batch job lends cores now (jobs lend with sbatch --faas-share)"
WAITING = "waiting for lent cores to free (others hold them, or come first by priority and fair share)"


def pending_reason(fn: D.Function, slots: Iterable[D.Slot], running: int, max_running: Optional[int],
                   now: Optional[float] = None) -> str:
    """The first reason ``fn``'s invocation cannot be placed now. ``slots``: active lends
    whose agent is connected; ``running``: the owner's invocations on slots."""
    now = time.time() if now is None else now
    slots = list(slots)
    if not slots:
        return NO_LEND
    if max_running is not None and running >= max_running:
        return f"quota: {running} of your invocations are on lent cores, at most {max_running} (max_running)"
    cores = [sl for sl in slots if len(sl.slurm_cpus) >= fn.cores]
    if not cores:
        most = max(len(sl.slurm_cpus) for sl in slots)
        return f"too many cores: the function asks for {fn.cores}, the largest lend now has {most}"
    mem = [sl for sl in cores if sl.mem_mb >= fn.mem_mb]
    if not mem:
        most = max(sl.mem_mb for sl in cores)
        return (f"too much memory: the function asks for {fn.mem_mb} MiB, the largest lend of {fn.cores}+ "
                f"cores now has {most} MiB")
    left = [float("inf") if sl.lend_end is None else sl.lend_end - now for sl in mem]
    if max(left) < fn.timeout_s:
        return (f"lend ends too soon: the function's timeout is {fn.timeout_s:g} s, the longest lend that fits "
                f"ends in {max(0.0, max(left)):.0f} s")
    return WAITING


def never_fits(fn: D.Function, max_cores: Optional[int], max_mem_mb: Optional[int]) -> Optional[str]:
    """At register: what no node of this site could ever run (config max_function_cores,
    max_function_mem_mb; None: the site set no bound)."""
    if max_cores is not None and fn.cores > max_cores:
        return f"{fn.cores} cores: no lend on this site is larger than {max_cores} (max_function_cores)"
    if max_mem_mb is not None and fn.mem_mb > max_mem_mb:
        return f"{fn.mem_mb} MiB: no lend on this site has more than {max_mem_mb} MiB (max_function_mem_mb)"
    return None
