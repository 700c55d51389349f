"""Running invocations on the node agent: a RUN from the co-scheduler started on the
lent cores it names, or queued until they are free.

Owns: RUN (checked against the slot and its lent CPUs, a duplicate ignored), the waiting
queue of RUNs dispatched ahead (FIFO per core: one that must wait keeps its cores from
those behind it; one whose lend now ends before its timeout could is handed back
unstarted), and launching an invocation on a warm or new executor (``Running``).

May not touch: executor processes beyond asking for one (``_executor_for``) and calling it
(``_call``), faas_runtime.executors, which also reports how a running invocation ended;
the co-scheduler's socket (only through ``send`` and ``report``); the slots (it only reads
their lend records). ``Invocations`` is mixed into ``faas_runtime.agent.Agent``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import protocol as P
from .confinement import ConfinementError
from .containers import ContainerError
from .executors import Running

if TYPE_CHECKING:
    from .agent import Slot

log = logging.getLogger("faas.agent")


def _lend_left(record: dict) -> float:
    """Seconds until a lend ends (the job's end minus its ``until``); inf when unknown."""
    end = record.get("end_time") or 0
    return float("inf") if not end else float(end) - 60 * int(record.get("until_min") or 0) - time.time()


class Invocations:
    """The invocations of one agent (mixed into ``Agent``, whose fields below it uses)."""

    slots: dict[str, Slot]
    running: dict[int, Running]
    waiting: dict[int, dict]  # RUN messages dispatched ahead, FIFO
    placed: dict[tuple[int, int], tuple[str, list]]
    stop_requested: bool
    welcomed: bool
    # and: send(), report() (faas_runtime.agent), _executor_for(), _call() (faas_runtime.executors)

    def _start(self, msg: dict) -> None:
        inv_id, attempt = int(msg["invocation_id"]), int(msg["attempt"])
        self.placed.setdefault((inv_id, attempt), (str(msg["slot_id"]), list(msg.get("cpus") or ())))
        slot = self.slots.get(msg["slot_id"])
        if slot is None or slot.revoked:
            self.report(P.EVICTED, invocation_id=inv_id, attempt=attempt, reason=f"slot {msg['slot_id']} is not lent here")
            return
        lent = set(slot.record["os_cpus"])
        if not set(msg["os_cpus"]) <= lent:
            self.report(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                        error=f"CPUs {msg['os_cpus']} are not lent by job {slot.job_id}")
            return
        if inv_id in self.running or inv_id in self.waiting:
            return  # a duplicate RUN of what runs or waits here already
        cores = frozenset(msg.get("cpus") or ())
        if cores & self._blocked_cores(slot.slot_id):
            self.waiting[inv_id] = msg  # dispatched ahead: starts when its cores free
            return
        self._launch(msg, slot, cores)

    def _running_cores(self, slot_id: str) -> set[int]:
        return {c for run in self.running.values() if run.slot_id == slot_id for c in run.cores}

    def _blocked_cores(self, slot_id: str) -> set[int]:
        """Cores of ``slot_id`` that a new invocation must wait for: those running
        invocations hold, and those invocations already waiting will take first."""
        blocked = self._running_cores(slot_id)
        lent = self.slots[slot_id].record["slurm_cpus"]
        for msg in self.waiting.values():
            if len(blocked) >= len(lent):
                break  # every core is taken: no need to read the rest of the queue
            if msg["slot_id"] == slot_id:
                blocked.update(msg.get("cpus") or ())
        return blocked

    def _start_waiting(self, slot_id: str) -> None:
        """Start, in order, the waiting invocations of ``slot_id`` whose cores are free;
        one that must still wait keeps its cores from those behind it (FIFO per core)."""
        slot = self.slots.get(slot_id)
        if self.stop_requested or slot is None or slot.revoked:
            return  # shutting down or revoked: the co-scheduler requeues what waits
        lent = len(slot.record["slurm_cpus"])
        while True:
            blocked, ready = self._running_cores(slot_id), []
            for inv_id, msg in self.waiting.items():
                if len(blocked) >= lent:
                    break  # the rest waits behind cores that are all taken
                if msg["slot_id"] == slot_id:
                    cores = frozenset(msg.get("cpus") or ())
                    if not cores & blocked:
                        ready.append((inv_id, msg, cores))
                    blocked |= cores
            freed = False  # one that did not start leaves its cores to those behind it
            for inv_id, msg, cores in ready:
                del self.waiting[inv_id]
                left = _lend_left(slot.record)
                if left < float(msg["timeout_s"]):
                    # It waited; the lend now ends before its timeout could: hand it back
                    # unstarted (the co-scheduler requeues it without using an attempt).
                    self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]), unstarted=True,
                                reason=f"the lend of {slot_id} ends in {max(left, 0):.0f} s, before its timeout")
                    freed = True
                    continue
                self._launch(msg, slot, cores)
                freed |= inv_id not in self.running  # could not start (reported)
            if not freed:
                return

    def _launch(self, msg: dict, slot: Slot, cores: frozenset[int]) -> None:
        inv_id, attempt = int(msg["invocation_id"]), int(msg["attempt"])
        try:
            ex = self._executor_for(msg, slot)
        except (ContainerError, ConfinementError, OSError, KeyError, ValueError) as exc:
            log.warning("invocation %d cannot start: %s", inv_id, exc)
            self.report(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                        error=f"could not start the function: {exc}")
            return
        ex.busy = inv_id
        now = time.monotonic()
        self.running[inv_id] = Running(inv_id, attempt, slot.slot_id, ex, now + float(msg["timeout_s"]), now, cores)
        self._call(ex, P.CALL, rid=f"{inv_id}.{attempt}", cpus=list(msg["os_cpus"]),
                   **{k: msg[k] for k in (P.PAYLOAD_BIN, "payload_json") if k in msg})
        if self.welcomed:  # else the HELLO lists it as running
            self.send(P.STARTED, invocation_id=inv_id, attempt=attempt)
