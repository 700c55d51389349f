"""The batch job gets its memory back the moment it needs it: the agent's memory guard.

Rule, per lending job and node (docs/runtime.md, docs/spank_faas.8.md "MEMORY"):

    job usage + memory lent + margin <= the job's memory

- **job usage** is the job's cgroup's working set: ``memory.usage_in_bytes`` (v1) or
  ``memory.current`` (v2) minus its inactive page cache (``total_inactive_file`` /
  ``inactive_file`` of ``memory.stat``), which the kernel reclaims before anything else;
- **the job's memory** is the cgroup's limit (task/cgroup ``ConstrainRAMSpace``), else the
  lend record's ``job_mem_mb`` (what Slurm allocated);
- **memory lent** is what the slot offers now: at most the plugin's ``mem_mb``;
- **margin** is ``max(margin_mb, margin_percent % of the job's memory)``: room for the
  job's next allocation between two samples (every loop turn, about 50 ms).

When the job grows past the rule, the lend shrinks at once to what is left
(``LendGuard.update``) and the agent frees memory until what the slot holds fits
(``MemoryGuard._shrink``): idle warm executors first (no work lost), then invocations
waiting for their cores (handed back unstarted: the attempt is given back), then running
invocations newest first (EVICTED: requeued), then hot leases newest first (a remote-memory
server ends, its epoch makes readers fail cleanly). Where the kernel reports memory
pressure for the job (v2 ``memory.pressure``, ``some avg10`` above ``pressure_percent``)
nothing is lent. The lend grows again only after the room stayed above it for
``hold_down_s``, and then only to the least room seen in that time (no flapping).

For the hold-down after a shrink the lend is **closed** to new work: the job is growing, and
work started there now would only be evicted again. The co-scheduler is sent a LEND whose
``mem_mb`` is the memory it may place new work in (``offered_record``): 0 while the lend is
closed, the lend's size otherwise (coscheduler/agents.py follows an ACTIVE slot's
``mem_mb``), so neither queued work nor a hot lease is placed there. What still comes (sent
before the co-scheduler heard) is checked here: a RUN the lend cannot take is parked (held,
so the co-scheduler does not place it again) and started when the lend takes it, else
handed back unstarted after the hold-down; a LEASE_START is refused (``lease_refusal``:
LEASE_FAILED with the reason). Each change is logged and the slot's history is kept in
``<workdir>/lends/<job>.json``. A job whose memory cannot be read (not confined, no
``job_mem_mb``) keeps its lend as the plugin wrote it (logged once).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import protocol as P

if TYPE_CHECKING:
    from .agent import Slot
    from .executors import Executor

log = logging.getLogger("faas.agent")

MIB = 1 << 20
UNLIMITED = 1 << 62  # a v1 limit at or above this means "no limit"


@dataclass(frozen=True)
class JobMemory:
    """One reading of a job's memory on this node, in MiB."""

    usage_mb: float
    limit_mb: Optional[float]  # None: the cgroup has no limit
    pressure: Optional[float] = None  # v2 "some avg10" (percent), None where the kernel has none


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _pressure_some_avg10(path: Path) -> Optional[float]:
    try:
        line = path.read_text().splitlines()[0]  # "some avg10=0.00 avg60=0.00 avg300=0.00 total=0"
        return float(line.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def job_memory_cgroup(root: Path, node: str, uid: int, job_id: int) -> Optional[tuple[int, Path]]:
    """(cgroup version, directory) of a job's memory cgroup as task/cgroup makes it (the
    layouts ``faas_cgroup_job_cpus`` reads for the cpuset), or None when not confined."""
    candidates = (
        (2, root / "system.slice" / f"{node}_slurmstepd.scope" / f"job_{job_id}"),
        (2, root / "system.slice" / "slurmstepd.scope" / f"job_{job_id}"),
        (1, root / "memory" / f"slurm_{node}" / f"uid_{uid}" / f"job_{job_id}"),
        (1, root / "memory" / "slurm" / f"uid_{uid}" / f"job_{job_id}"),
    )
    for version, path in candidates:
        if (path / ("memory.current" if version == 2 else "memory.usage_in_bytes")).exists():
            return version, path
    return None


def read_job_memory(version: int, path: Path) -> Optional[JobMemory]:
    """The job's working set, limit and pressure; None when the cgroup is gone."""
    if version == 1:
        usage = _read_int(path / "memory.usage_in_bytes")
        limit = _read_int(path / "memory.limit_in_bytes")
        inactive = _stat_value(path / "memory.stat", "total_inactive_file")
        pressure = None
    else:
        usage = _read_int(path / "memory.current")
        limit = _read_int(path / "memory.max")
        inactive = _stat_value(path / "memory.stat", "inactive_file")
        pressure = _pressure_some_avg10(path / "memory.pressure")
    if usage is None:
        return None
    limit_mb = None if limit is None or limit >= UNLIMITED else limit / MIB
    return JobMemory(max(0, usage - inactive) / MIB, limit_mb, pressure)


@dataclass
class GuardConfig:
    margin_mb: float = 128.0
    margin_percent: float = 5.0
    hold_down_s: float = 10.0
    pressure_percent: float = 10.0  # v2 "some avg10" above this: lend nothing
    granule_mb: float = 64.0  # a shrink goes down to a multiple of this

    def margin(self, job_mem_mb: float) -> float:
        return max(self.margin_mb, job_mem_mb * self.margin_percent / 100.0)


@dataclass
class LendGuard:
    """The memory one slot lends now, by the rule above. Pure: times are passed in."""

    base_mb: int  # what the plugin lent
    config: GuardConfig
    current_mb: int = -1  # -1: not decided yet (the base, until the first sample)
    above_since: Optional[float] = None  # the room has been above current since then
    least_room: float = 0.0  # the least room seen since above_since
    shrunk_at: Optional[float] = None  # monotonic time of the last shrink

    def __post_init__(self) -> None:
        if self.current_mb < 0:
            self.current_mb = self.base_mb

    def closed(self, now: float) -> bool:
        """Within the hold-down after a shrink: no new work (the job is still growing)."""
        return self.shrunk_at is not None and now - self.shrunk_at < self.config.hold_down_s

    def room(self, sample: JobMemory, job_mem_mb: float) -> float:
        if sample.pressure is not None and sample.pressure > self.config.pressure_percent:
            return 0.0
        return max(0.0, job_mem_mb - sample.usage_mb - self.config.margin(job_mem_mb))

    def update(self, sample: JobMemory, job_mem_mb: float, now: float) -> Optional[int]:
        """The new lend in MiB when it changes, else None."""
        room = min(float(self.base_mb), self.room(sample, job_mem_mb))
        if room < self.current_mb:
            # down to a whole granule: a growing job moves the lend in few, larger steps
            granule = self.config.granule_mb
            self.current_mb, self.above_since = int(room // granule * granule), None
            self.shrunk_at = now
            return self.current_mb
        if room <= self.current_mb:
            self.above_since = None
            return None
        if self.above_since is None:
            self.above_since, self.least_room = now, room
            return None
        self.least_room = min(self.least_room, room)
        if now - self.above_since < self.config.hold_down_s or int(self.least_room) <= self.current_mb:
            return None
        self.current_mb, self.above_since = int(self.least_room), None
        return self.current_mb


@dataclass
class SlotMemory:
    guard: LendGuard
    cgroup: Optional[tuple[int, Path]] = None
    history: list = field(default_factory=list)  # [unix time, lent MiB, job usage MiB, job memory MiB, why]
    warned: bool = False
    offered_mb: int = -1  # the mem_mb the co-scheduler was last sent (-1: the plugin's, via the spool)


class MemoryGuard:
    """Mixed into ``faas_runtime.agent.Agent``: ``step_memory`` each loop turn, and
    ``memory_admits`` for every RUN before it is started."""

    node: str
    workdir: Path
    grace_s: float
    slots: dict
    running: dict
    waiting: dict
    executors: dict
    welcomed: bool
    cgroup_root: Path
    memory: GuardConfig
    memory_slots: dict
    placed: dict
    parked: dict  # invocation id -> (RUN, monotonic time it is handed back)
    # and: send(), report() (agent), _stop(), _hard_kill() (executors), _lease_end() (hot_leases), _start() (invocations)

    def step_memory(self) -> None:
        now = time.monotonic()
        if self.parked:
            self._step_parked(now)
        for slot_id, slot in list(self.slots.items()):
            if slot.revoked:
                self.memory_slots.pop(slot_id, None)
                continue
            state = self._slot_memory(slot)
            if state is None:
                continue
            rec = slot.record
            if state.cgroup is None:
                state.cgroup = job_memory_cgroup(self.cgroup_root, self.node, int(rec.get("uid", 0)), slot.job_id)
            sample = read_job_memory(*state.cgroup) if state.cgroup else None
            job_mem = (sample.limit_mb if sample and sample.limit_mb else None) or float(rec.get("job_mem_mb") or 0)
            if sample is None or job_mem <= 0:
                if not state.warned:
                    state.warned = True
                    log.info("job %d: its memory on %s cannot be watched (not confined, or no job_mem_mb); "
                             "it lends %s MiB as the plugin wrote", slot.job_id, self.node, state.guard.base_mb)
                state.cgroup = None  # look again later (the cgroup may appear with the first step)
                continue
            new = state.guard.update(sample, job_mem, now)
            if new is not None:
                self._lend_changed(slot, state, new, sample, job_mem)
            self._offer(slot, state)  # the hold-down after a shrink may have ended

    def _slot_memory(self, slot: "Slot") -> Optional[SlotMemory]:
        state = self.memory_slots.get(slot.slot_id)
        if state is None:
            base = int(slot.record.get("mem_mb") or 0)
            if base <= 0:
                return None
            state = self.memory_slots[slot.slot_id] = SlotMemory(LendGuard(base, self.memory), offered_mb=base)
        return state

    def offered_record(self, slot: "Slot") -> dict:
        """The lend record as the co-scheduler is sent it (LEND, and again after a WELCOME):
        ``mem_mb`` is the memory it may place new work in, 0 while the lend is closed."""
        state = self.memory_slots.get(slot.slot_id)
        if state is None or not state.guard.closed(time.monotonic()):
            return slot.record
        return {**slot.record, "mem_mb": 0}

    def _offer(self, slot: "Slot", state: SlotMemory) -> None:
        """Send the co-scheduler a LEND when what it may place on the slot changed."""
        record = self.offered_record(slot)
        if record["mem_mb"] == state.offered_mb or not self.welcomed:
            return
        log.info("job %d on %s: the co-scheduler may place %d MiB of new work there (lend %d MiB%s)",
                 slot.job_id, self.node, record["mem_mb"], state.guard.current_mb,
                 ", closed for the hold-down after a shrink" if record is not slot.record else "")
        state.offered_mb = int(record["mem_mb"])
        self.send(P.LEND, record=record)

    def _lend_changed(self, slot: "Slot", state: SlotMemory, new_mb: int, sample: JobMemory, job_mem: float) -> None:
        old = int(slot.record.get("mem_mb") or 0)
        why = "the job grew" if new_mb < old else "the job left room again"
        log.info("job %d on %s: lend %d -> %d MiB (%s: uses %.0f of %.0f MiB, margin %.0f%s)", slot.job_id,
                 self.node, old, new_mb, why, sample.usage_mb, job_mem, self.memory.margin(job_mem),
                 "" if sample.pressure is None else f", pressure {sample.pressure:.1f} %")
        slot.record = {**slot.record, "mem_mb": new_mb}
        if new_mb < old:
            self._shrink(slot, new_mb)
        self._offer(slot, state)
        state.history.append([round(time.time(), 3), new_mb, round(sample.usage_mb, 1), round(job_mem, 1), why])
        self._write_history(slot, state)

    def _write_history(self, slot: "Slot", state: SlotMemory) -> None:
        d = self.workdir / "lends"
        try:
            d.mkdir(mode=0o700, exist_ok=True)
            tmp = d / f".{slot.job_id}.json.tmp"
            tmp.write_text(json.dumps({"job_id": slot.job_id, "node": self.node,
                                       "base_mb": state.guard.base_mb, "history": state.history}))
            os.replace(tmp, d / f"{slot.job_id}.json")
        except OSError as exc:
            log.warning("cannot write the lend history of job %d: %s", slot.job_id, exc)

    def _held_mb(self, slot_id: str, stopping: bool = False) -> int:
        """What the slot's executors (and, with ``stopping``, those not reaped yet) and
        waiting invocations hold, by their memory limits."""
        held = sum(ex.mem_mb for ex in self.executors.values()
                   if ex.slot_id == slot_id and (stopping or not ex.stopping))
        return held + sum(int(m["mem_mb"]) for m in self.waiting.values() if m["slot_id"] == slot_id)

    def _shrink(self, slot: "Slot", limit_mb: int) -> None:
        """Free what the slot holds beyond ``limit_mb``, cheapest loss first."""
        held = self._held_mb(slot.slot_id)
        reason = f"lend of job {slot.job_id} on {self.node} shrank to {limit_mb} MiB: the job needs its memory"
        mine = [ex for ex in self.executors.values() if ex.slot_id == slot.slot_id and not ex.stopping]
        for ex in [ex for ex in mine if ex.idle]:
            if held <= limit_mb:
                return
            held -= ex.mem_mb
            self._free(ex, reason)
        for inv_id in reversed([i for i, m in self.waiting.items() if m["slot_id"] == slot.slot_id]):
            if held <= limit_mb:
                return
            msg = self.waiting.pop(inv_id)
            held -= int(msg["mem_mb"])
            self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]), unstarted=True, reason=reason)
        runs = sorted((r for r in self.running.values() if r.slot_id == slot.slot_id and r.reason is None),
                      key=lambda r: r.started, reverse=True)
        for run in runs:
            if held <= limit_mb:
                return
            held -= run.executor.mem_mb
            run.reason = reason
            self._free(run.executor, reason)
        leased = sorted((ex for ex in mine if ex.lease_id is not None and not ex.stopping),
                        key=lambda ex: ex.started_at, reverse=True)
        for ex in leased:
            if held <= limit_mb:
                return
            held -= ex.mem_mb
            self._lease_end(ex.lease_id, reason)
            self._free(ex, reason, graceful=True)

    def _free(self, ex: "Executor", reason: str, graceful: bool = False) -> None:
        """SIGKILL now: the job waits for this memory, and an evicted invocation is run
        again anyway. ``graceful`` (a hot lease, maybe a remote-memory server that zeroes
        its epoch on SIGTERM so its readers fail cleanly): SIGTERM, SIGKILL after 0.5 s."""
        self._stop(ex, reason)
        if not graceful:
            self._hard_kill(ex)
            return
        soon = time.monotonic() + min(self.grace_s, 0.5)
        ex.kill_at = soon if ex.kill_at is None else min(ex.kill_at, soon)

    def memory_admits(self, msg: dict) -> bool:
        """Whether a RUN may start now. One that does not fit the lend as the guard has it
        (memory of stopped executors counts until they are reaped), or that comes within
        the hold-down after a shrink, is parked: started here when the lend takes it, else
        handed back unstarted after ``hold_down_s`` (its attempt given back). Parked RUNs
        are held (heartbeats, HELLO), so the co-scheduler does not place them again meanwhile."""
        inv_id = int(msg["invocation_id"])
        state = self.memory_slots.get(str(msg.get("slot_id")))
        if state is None or inv_id in self.running or inv_id in self.waiting or inv_id in self.parked:
            return True
        if self._fits(state, msg, time.monotonic()):
            return True
        self.placed.setdefault((inv_id, int(msg["attempt"])), (str(msg["slot_id"]), list(msg.get("cpus") or ())))
        self.parked[inv_id] = (msg, time.monotonic() + self.memory.hold_down_s)
        return False

    def _fits(self, state: SlotMemory, msg: dict, now: float) -> bool:
        if state.guard.closed(now):
            return False
        return self._held_mb(str(msg["slot_id"]), stopping=True) + int(msg["mem_mb"]) <= state.guard.current_mb

    def lease_refusal(self, msg: dict) -> Optional[str]:
        """Why a LEASE_START may not have an executor on its slot now (None: it may). A
        lease is not parked like a RUN: its client waits for it, so it is refused at once
        (LEASE_FAILED) and the client asks again. The co-scheduler places none on a closed
        or full lend; this catches one sent before it heard of the shrink."""
        state = self.memory_slots.get(str(msg.get("slot_id")))
        if state is None or self._fits(state, msg, time.monotonic()):
            return None
        held = self._held_mb(str(msg["slot_id"]), stopping=True)
        closed = " and closed for the hold-down after a shrink" if state.guard.closed(time.monotonic()) else ""
        return (f"the lend of {msg['slot_id']} is {state.guard.current_mb} MiB now ({held} MiB held){closed}: "
                f"the job needs its memory; {int(msg['mem_mb'])} MiB do not fit")

    def _step_parked(self, now: float) -> None:
        for inv_id, (msg, until) in list(self.parked.items()):
            slot = self.slots.get(msg["slot_id"])
            state = self.memory_slots.get(msg["slot_id"])
            if slot is None or slot.revoked or state is None or self._fits(state, msg, now):
                del self.parked[inv_id]
                self._start(msg)  # a revoked slot hands it back as _start does for any RUN
            elif now >= until:
                del self.parked[inv_id]
                self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]), unstarted=True,
                            reason=f"the lend of {msg['slot_id']} is {state.guard.current_mb} MiB now: "
                                   f"the job needs its memory")
