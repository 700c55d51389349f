"""The agent's memory guard (faas_runtime/memory_watch.py): job usage + lent + margin stays
within the job's memory; the lend shrinks at once, frees what the slot holds cheapest loss
first, and regrows only after a hold-down."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from faas_runtime import protocol as P
from faas_runtime.memory_watch import GuardConfig, JobMemory, LendGuard, MemoryGuard, job_memory_cgroup, \
    read_job_memory

MIB = 1 << 20


def test_margin_is_the_larger_of_mib_and_percent():
    cfg = GuardConfig(margin_mb=128, margin_percent=5)
    assert cfg.margin(1000) == 128 and cfg.margin(10_000) == 500


def test_shrinks_at_once_and_regrows_after_the_hold_down_to_the_least_room():
    g = LendGuard(1024, GuardConfig(margin_mb=100, margin_percent=0, hold_down_s=10))
    job = 2048.0
    assert g.update(JobMemory(200, None), job, 0.0) is None  # room 1748 > base: lend stays 1024
    assert g.update(JobMemory(1200, None), job, 1.0) == 704  # 2048 - 1200 - 100 = 748, in 64 MiB granules
    assert g.update(JobMemory(1930, None), job, 2.0) == 0  # 95 % of the job: nothing left
    assert g.update(JobMemory(2000, None), job, 2.5) is None  # already nothing
    # the job frees its memory: nothing changes before the hold-down ...
    for t in (3.0, 5.0, 8.0, 12.9):
        assert g.update(JobMemory(500 if t != 8.0 else 900, None), job, t) is None
    # ... then the lend regrows to the least room seen meanwhile (job at 900: 1048 -> the base)
    assert g.update(JobMemory(500, None), job, 13.1) == 1024
    assert g.current_mb == 1024


def test_a_dip_during_the_hold_down_restarts_it():
    g = LendGuard(1000, GuardConfig(margin_mb=0, margin_percent=0, hold_down_s=5), current_mb=0)
    assert g.update(JobMemory(500, None), 2000, 0.0) is None
    assert g.update(JobMemory(2000, None), 2000, 3.0) is None  # no room: the clock stops
    assert g.update(JobMemory(500, None), 2000, 4.0) is None
    assert g.update(JobMemory(500, None), 2000, 8.9) is None
    assert g.update(JobMemory(500, None), 2000, 9.1) == 1000


def test_pressure_lends_nothing():
    g = LendGuard(512, GuardConfig(pressure_percent=10))
    assert g.update(JobMemory(10, None, pressure=25.0), 8192, 0.0) == 0


def _v1(root: Path, node: str, uid: int, job: int, usage: int, limit: int, inactive: int) -> Path:
    d = root / "memory" / f"slurm_{node}" / f"uid_{uid}" / f"job_{job}"
    d.mkdir(parents=True)
    (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.stat").write_text(f"cache 0\nrss {usage}\ntotal_inactive_file {inactive}\n")
    return d


def test_reads_a_v1_job_cgroup_without_its_inactive_cache(tmp_path):
    _v1(tmp_path, "n1", 1000, 7, 600 * MIB, 2048 * MIB, 100 * MIB)
    found = job_memory_cgroup(tmp_path, "n1", 1000, 7)
    assert found == (1, tmp_path / "memory/slurm_n1/uid_1000/job_7")
    assert read_job_memory(*found) == JobMemory(500.0, 2048.0, None)
    assert job_memory_cgroup(tmp_path, "n2", 1000, 7) is None


def test_reads_a_v2_job_cgroup_with_pressure(tmp_path):
    d = tmp_path / "system.slice" / "n1_slurmstepd.scope" / "job_9"
    d.mkdir(parents=True)
    (d / "memory.current").write_text(f"{300 * MIB}\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.stat").write_text(f"anon {300 * MIB}\ninactive_file 0\n")
    (d / "memory.pressure").write_text("some avg10=12.50 avg60=1.00 avg300=0.10 total=5\nfull avg10=0 avg60=0 "
                                       "avg300=0 total=0\n")
    found = job_memory_cgroup(tmp_path, "n1", 0, 9)
    assert found == (2, d)
    assert read_job_memory(*found) == JobMemory(300.0, None, 12.5)


# -- what a shrinking slot frees, in order, through the agent's own hooks ---------------


@dataclass
class FakeEx:
    name: str
    slot_id: str
    mem_mb: int
    started_at: float
    busy: Optional[int] = None
    lease_id: Optional[str] = None
    kill_at: Optional[float] = None
    cgroup: object = None

    @property
    def stopping(self) -> bool:
        return self.kill_at is not None

    @property
    def idle(self) -> bool:
        return self.busy is None and self.lease_id is None and not self.stopping


@dataclass
class FakeRun:
    invocation_id: int
    attempt: int
    slot_id: str
    executor: FakeEx
    started: float
    reason: Optional[str] = None


@dataclass
class FakeSlot:
    slot_id: str
    job_id: int
    record: dict
    revoked: bool = False


@dataclass
class FakeAgent(MemoryGuard):
    workdir: Path
    node: str = "n1"
    grace_s: float = 2.0
    welcomed: bool = True
    cgroup_root: Path = Path("/nonexistent")
    memory: GuardConfig = field(default_factory=lambda: GuardConfig(margin_mb=0, margin_percent=0, hold_down_s=5))
    slots: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)
    waiting: dict = field(default_factory=dict)
    executors: dict = field(default_factory=dict)
    memory_slots: dict = field(default_factory=dict)
    placed: dict = field(default_factory=dict)
    parked: dict = field(default_factory=dict)
    sent: list = field(default_factory=list)
    stopped: list = field(default_factory=list)
    ended_leases: list = field(default_factory=list)

    def send(self, kind, **fields):
        self.sent.append((kind, fields))

    def report(self, kind, **fields):
        self.sent.append((kind, fields))

    def _stop(self, ex, reason):
        self.stopped.append(ex.name)
        ex.kill_at = time.monotonic() + self.grace_s

    def _hard_kill(self, ex):
        pass

    def _lease_end(self, lease_id, reason):
        self.ended_leases.append(lease_id)


def _agent(tmp_path, kind: type = FakeAgent) -> FakeAgent:
    a = kind(workdir=tmp_path)
    slot = FakeSlot("5@n1", 5, {"job_id": 5, "uid": 0, "mem_mb": 1000, "job_mem_mb": 2000, "os_cpus": [1]})
    a.slots[slot.slot_id] = slot
    idle = FakeEx("idle", slot.slot_id, 200, 0.0)
    old, new = FakeEx("old", slot.slot_id, 200, 1.0, busy=1), FakeEx("new", slot.slot_id, 200, 2.0, busy=2)
    lease = FakeEx("lease", slot.slot_id, 300, 0.5, lease_id="L1")
    a.executors = {e.name: e for e in (idle, old, new, lease)}
    a.running = {1: FakeRun(1, 1, slot.slot_id, old, 1.0), 2: FakeRun(2, 1, slot.slot_id, new, 2.0)}
    a.waiting = {3: {"slot_id": slot.slot_id, "mem_mb": 100, "attempt": 1, "invocation_id": 3}}
    return a


def test_shrink_frees_idle_then_waiting_then_newest_running_then_leases(tmp_path):
    a = _agent(tmp_path)
    assert a._held_mb("5@n1") == 1000
    a.step_memory()  # no cgroup here: the record's job_mem_mb is known but usage is not; nothing changes
    assert a.stopped == [] and a.slots["5@n1"].record["mem_mb"] == 1000
    slot, state = a.slots["5@n1"], a._slot_memory(a.slots["5@n1"])
    new = state.guard.update(JobMemory(1400, 2000), 2000, 0.0)  # room 600
    a._lend_changed(slot, state, new, JobMemory(1400, 2000), 2000)
    assert new == 576 and slot.record["mem_mb"] == 576
    # idle executor (200), the waiting RUN (100), then the newest running one (200): 1000 -> 500
    assert a.stopped == ["idle", "new"] and 3 not in a.waiting and a.running[2].reason and a.running[1].reason is None
    assert (P.EVICTED, {"invocation_id": 3, "attempt": 1, "unstarted": True,
                        "reason": "lend of job 5 on n1 shrank to 576 MiB: the job needs its memory"}) in a.sent
    assert (P.LEND, {"record": slot.record}) in a.sent  # shrunk at monotonic 0.0: the hold-down is long over
    # the job at 95 %: everything goes, the lease (a remote-memory server) last
    new = state.guard.update(JobMemory(1900, 2000), 2000, 1.0)
    a._lend_changed(slot, state, new, JobMemory(1900, 2000), 2000)
    assert a.stopped == ["idle", "new", "old", "lease"] and a.ended_leases == ["L1"]
    history = (tmp_path / "lends" / "5.json").read_text()
    assert '"base_mb": 1000' in history and "the job grew" in history


def test_a_run_that_does_not_fit_is_parked_then_started_or_handed_back_unstarted(tmp_path):
    a = _agent(tmp_path)
    started = []
    a._start = lambda msg: started.append(msg["invocation_id"])
    slot, state = a.slots["5@n1"], a._slot_memory(a.slots["5@n1"])
    state.guard.current_mb = 1100
    run = {"invocation_id": 9, "attempt": 2, "slot_id": "5@n1", "mem_mb": 100, "cpus": [7]}
    assert a.memory_admits(run)  # 1000 held + 100 fits 1100
    state.guard.current_mb = 1050
    assert not a.memory_admits(run) and 9 in a.parked  # held back, not refused: no bounce
    assert a.memory_admits({**run, "invocation_id": 1})  # a duplicate of what runs: the agent ignores it anyway
    state.guard.current_mb = 1100
    a._step_parked(time.monotonic())
    assert started == [9] and not a.parked  # the lend takes it now
    state.guard.current_mb, state.guard.shrunk_at = 5000, time.monotonic()
    assert not a.memory_admits({**run, "invocation_id": 10})  # within the hold-down after a shrink
    state.guard.current_mb = 1000  # and the lend cannot take it when its time is up
    a._step_parked(time.monotonic() + 60)
    kind, fields = a.sent[-1]
    assert kind == P.EVICTED and fields["unstarted"] and fields["invocation_id"] == 10 and not a.parked
    assert slot.record["mem_mb"] == 1000


def test_shrinks_go_down_to_whole_granules():
    g = LendGuard(1024, GuardConfig(margin_mb=0, margin_percent=0, granule_mb=64))
    assert g.update(JobMemory(1000, None), 2048, 0.0) is None  # room 1048: the whole base still fits
    assert g.update(JobMemory(1030, None), 2048, 0.1) == 960  # room 1018 -> 960
    assert g.update(JobMemory(1050, None), 2048, 0.2) is None  # room 998 still holds 960: no message


def test_a_shrunk_lend_is_closed_to_new_work_for_the_hold_down_then_offers_its_size(tmp_path):
    a = _agent(tmp_path)
    slot, state = a.slots["5@n1"], a._slot_memory(a.slots["5@n1"])
    a._offer(slot, state)
    assert a.sent == [] and a.offered_record(slot) is slot.record  # as the plugin lent it: nothing to say
    new = state.guard.update(JobMemory(1400, 2000), 2000, time.monotonic())
    a._lend_changed(slot, state, new, JobMemory(1400, 2000), 2000)
    lends = [f["record"]["mem_mb"] for k, f in a.sent if k == P.LEND]
    assert lends == [0] and a.offered_record(slot)["mem_mb"] == 0 and slot.record["mem_mb"] == 576
    a._offer(slot, state)
    assert len([k for k, _ in a.sent if k == P.LEND]) == 1  # said once
    state.guard.shrunk_at -= 5.1  # the hold-down (5 s here) is over: the lend as it is now
    a._offer(slot, state)
    assert [f["record"]["mem_mb"] for k, f in a.sent if k == P.LEND] == [0, 576]
    a.welcomed = False  # no session: nothing is sent (a new WELCOME announces offered_record)
    state.guard.shrunk_at = time.monotonic()
    a._offer(slot, state)
    assert [f["record"]["mem_mb"] for k, f in a.sent if k == P.LEND] == [0, 576]


def test_a_lease_is_refused_on_a_closed_or_full_lend(tmp_path):
    a = _agent(tmp_path)  # lend 1000 MiB, 1000 held
    state = a._slot_memory(a.slots["5@n1"])
    start = {"lease_id": "L9", "slot_id": "5@n1", "mem_mb": 100}
    assert "1000 MiB held" in a.lease_refusal(start) and "100 MiB do not fit" in a.lease_refusal(start)
    state.guard.current_mb = 1100
    assert a.lease_refusal(start) is None
    assert a.lease_refusal({**start, "slot_id": "6@n1"}) is None  # a lend the guard does not watch
    state.guard.shrunk_at = time.monotonic()
    assert "closed for the hold-down" in a.lease_refusal(start)


def test_the_agent_answers_a_lease_start_on_a_shrunk_lend_with_lease_failed(tmp_path):
    from faas_runtime.hot_leases import HotLeases

    @dataclass
    class LeasingAgent(HotLeases, FakeAgent):
        def _executor_for(self, msg, slot):
            raise AssertionError("no executor for a lease the lend cannot hold")

    a = _agent(tmp_path, LeasingAgent)  # lend 1000 MiB, 1000 held
    a._slot_memory(a.slots["5@n1"])  # the guard watches the slot from the loop turn after it came
    a._lease_start({"lease_id": "L9", "slot_id": "5@n1", "mem_mb": 100, "token": "t", "os_cpus": [1]})
    kind, fields = a.sent[-1]
    assert kind == P.LEASE_FAILED and fields["lease_id"] == "L9" and "the job needs its memory" in fields["reason"]
