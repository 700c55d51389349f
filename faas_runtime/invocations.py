"""Running invocations on the node agent: a RUN from the co-scheduler started on the
lent cores it names, or queued until they are free.

Owns: RUN (checked against the slot and its lent CPUs, a duplicate ignored), the waiting
queue of RUNs dispatched ahead (FIFO per core: one that must wait keeps its cores from
those behind it; one whose lend now ends before its timeout could is handed back
unstarted), launching an invocation on a warm or new executor (``Running``), and sending
the next ones ahead to it (below).

Sent ahead: an invocation waiting for exactly the cores of one running on an executor of
its function goes to that executor at once (``Executor.ahead``, at most ``CALLS_AHEAD``,
topped up in one CALLS frame when ``CALLS_REFILL`` or fewer are left). The executor runs
them in order, so the RESULT of one says the next began (its STARTED, its timeout's clock),
and a short function runs back to back without a round trip through this loop per call.
They are still held here: a heartbeat or HELLO lists them; a CANCEL drops one not begun
(``_drop_ahead``); an executor that stops, for whatever reason, gives back those it had
not begun to the front of the waiting queue (``_unsend``: started elsewhere, never lost,
never reported twice), or, on a revoked slot, reports them EVICTED.

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

CALLS_AHEAD = 16  # invocations sent ahead to one executor, at most
CALLS_REFILL = 8  # topped up when this few are left: several CALLs per frame, not one per RESULT


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
    # and: send(), report() (faas_runtime.agent), _executor_for(), _executor_key(), _call(),
    # _send_frame() (faas_runtime.executors)

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
        if inv_id in self.running or inv_id in self.waiting or self._ahead_on(inv_id) is not None:
            return  # a duplicate RUN of what runs or waits here already
        cores = frozenset(msg.get("cpus") or ())
        if cores & self._blocked_cores(slot.slot_id):
            self.waiting[inv_id] = msg  # dispatched ahead: starts when its cores free
            self.refill.add(slot.slot_id)  # sent ahead to an executor by step_ahead, this loop turn
            return
        self._launch(msg, slot, cores)

    def _ahead_on(self, inv_id: int):
        """The executor ``inv_id`` was sent ahead to, or None."""
        for ex in self.executors.values():
            if inv_id in ex.ahead:
                return ex
        return None

    def step_ahead(self) -> None:
        """Send waiting invocations ahead to their executors, once per slot and loop turn."""
        refill, self.refill = self.refill, set()
        for slot_id in refill:
            self._start_waiting(slot_id)

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
        """Start, in order, the waiting invocations of ``slot_id`` whose cores are free, and
        send ahead those waiting for exactly the cores of a running one of their function;
        one that must still wait keeps its cores from those behind it (FIFO per core)."""
        slot = self.slots.get(slot_id)
        if self.stop_requested or slot is None or slot.revoked:
            return  # shutting down or revoked: the co-scheduler requeues what waits
        lent = len(slot.record["slurm_cpus"])
        while True:
            chains = {run.cores: run.executor for run in self.running.values()
                      if run.slot_id == slot_id and run.cores and run.reason is None}
            blocked = self._running_cores(slot_id)
            claimed: set[int] = set()  # cores an earlier waiting invocation takes first
            ready, ahead = [], []
            room = {ex.name: (CALLS_AHEAD - len(ex.ahead) if len(ex.ahead) <= CALLS_REFILL and ex.lease_id is None
                              and not ex.stopping else 0) for ex in chains.values()}
            for inv_id, msg in self.waiting.items():
                if len(claimed) >= lent:
                    break  # the rest waits behind cores that are all taken
                if msg["slot_id"] != slot_id:
                    continue
                cores = frozenset(msg.get("cpus") or ())
                if not cores & claimed:
                    if not cores & blocked:
                        ready.append((inv_id, msg, cores))
                    else:
                        ex = chains.get(cores)
                        if ex is not None and room[ex.name] > 0 and self._executor_key(msg, slot) == ex.key:
                            room[ex.name] -= 1
                            ahead.append((ex, inv_id, msg, cores))
                            continue  # taken off the queue: the next one on these cores may go too
                claimed |= cores
            freed = False  # one that did not start leaves its cores to those behind it
            calls: dict[str, list] = {}
            for ex, inv_id, msg, cores in ahead:
                del self.waiting[inv_id]
                if self._too_late(slot, inv_id, msg):
                    continue
                ex.ahead[inv_id] = (msg, cores, time.monotonic())
                calls.setdefault(ex.name, []).append(self._call_fields(msg))
            for name, fields in calls.items():
                ex = self.executors[name]
                if len(fields) == 1:
                    self._call(ex, P.CALL, **fields[0])
                else:
                    self._call(ex, P.CALLS, calls=fields)
            for inv_id, msg, cores in ready:
                del self.waiting[inv_id]
                if self._too_late(slot, inv_id, msg):
                    freed = True
                    continue
                self._launch(msg, slot, cores)
                freed = True  # started (it may take more sent ahead) or could not start (reported)
            if not freed:
                return

    def _too_late(self, slot: Slot, inv_id: int, msg: dict) -> bool:
        """It waited; the lend now ends before its timeout could: hand it back unstarted
        (the co-scheduler requeues it without using an attempt)."""
        left = _lend_left(slot.record)
        if left >= float(msg["timeout_s"]):
            return False
        self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]), unstarted=True,
                    reason=f"the lend of {slot.slot_id} ends in {max(left, 0):.0f} s, before its timeout")
        return True

    @staticmethod
    def _call_fields(msg: dict) -> dict:
        return {"rid": f"{msg['invocation_id']}.{msg['attempt']}", "cpus": list(msg["os_cpus"]),
                **{k: msg[k] for k in (P.PAYLOAD_BIN, "payload_json") if k in msg}}

    def _promote(self, ex) -> None:
        """The executor finished its running invocation: the first sent ahead has begun."""
        inv_id, (msg, cores, sent) = next(iter(ex.ahead.items()))
        del ex.ahead[inv_id]
        attempt, now = int(msg["attempt"]), time.monotonic()
        ex.busy = inv_id
        self.running[inv_id] = Running(inv_id, attempt, msg["slot_id"], ex, now + float(msg["timeout_s"]), now, cores,
                                       sent=sent)
        if self.welcomed:
            self.send(P.STARTED, invocation_id=inv_id, attempt=attempt)
        if len(ex.ahead) <= CALLS_REFILL:
            self.refill.add(msg["slot_id"])

    def _unsend(self, ex) -> None:
        """Take back what was sent ahead to an executor that stops: to the front of the
        waiting queue (they keep their order), or EVICTED if their slot was revoked."""
        if not ex.ahead:
            return
        back, ex.ahead = ex.ahead, {}
        slot = self.slots.get(ex.slot_id)
        if slot is None or slot.revoked:
            for inv_id, (msg, _cores, _sent) in back.items():
                self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]),
                            reason=f"slot {ex.slot_id} revoked")
            return
        self.waiting = {**{inv_id: msg for inv_id, (msg, _cores, _sent) in back.items()}, **self.waiting}
        self.refill.add(ex.slot_id)

    def _drop_ahead(self, inv_id: int) -> bool:
        """A CANCEL of an invocation sent ahead: the executor drops it if it has not begun
        (if it has, its RESULT is ignored: no longer expected)."""
        ex = self._ahead_on(inv_id)
        if ex is None:
            return False
        msg = ex.ahead.pop(inv_id)[0]
        self._call(ex, P.CANCEL, rids=[f"{inv_id}.{msg['attempt']}"])
        return True

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
        self.running[inv_id] = Running(inv_id, attempt, slot.slot_id, ex, now + float(msg["timeout_s"]), now, cores,
                                       sent=now)
        self._call(ex, P.CALL, **self._call_fields(msg))
        if self.welcomed:  # else the HELLO lists it as running
            self.send(P.STARTED, invocation_id=inv_id, attempt=attempt)
