"""Replay a job trace and backfill functions into the opted-in jobs' idle cores.

The placement decision is ``coscheduler.scheduler.place`` itself (looked up at call time,
so the replay always runs the co-scheduler's current rules); this module only keeps the
simulated state and turns it into ``SlotView`` / ``PendingInvocation`` values.

Model (documented in docs/analyze.md):

- A job opts in with probability ``opt_in`` (decided by a hash of seed and job id, so a
  run is reproducible and independent of input order). It lends
  ``floor(p (1 - u))`` cores (``stats.idle_cores``; u is the trace's CPU used share, or
  ``assumed_cpu_share`` when the trace has none) and ``p * mem_per_core_mb * (1 - m)`` MB of
  memory (m the trace's memory used share, else ``default_mem_used_share``: the trace's
  absolute memory sizes are decades old, so only the share is taken from it).
- One job is one slot (``slot_id`` = job id). Walltime-aware: ``lend_end`` = start +
  requested time (what the co-scheduler knows; ``None`` if the trace has none).
  Walltime-unaware: ``lend_end = None``. Either way the job's *actual* end takes the
  cores back: a function still running then is evicted, and its work is lost.
- Demand is saturated: before every placement the queue is topped up with invocations
  drawn from the function mix to (free cores of all open slots + ``queue_depth``), so the result is what the spare capacity can
  absorb (an upper bound for a given mix). Durations are lognormal (median, sigma), cut
  at the class timeout.
- Event driven: ticks only at job starts, job ends and function completions; every tick
  calls ``place`` once with all open slots.
- Bounded work: saturated demand over a whole trace is ~10^8 functions for LANL-CM5, so
  only a deterministic sample of the opted-in jobs is replayed, at the rate that makes
  the expected number of functions ``budget`` (one cheap pre-pass over the input computes
  the opted-in spare core-seconds S). Totals are scaled with the ratio estimator
  ``S / S_sample``; shares (recovered / spare, evictions per function) need no scaling.
  ``sample_rate=1`` replays every opted-in job.
"""
from __future__ import annotations

import heapq
import json
import math
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from ... import scheduler
from ...scheduler import PendingInvocation, SlotView
from .records import JobRecord
from .stats import idle_cores


@dataclass(frozen=True)
class FunctionClass:
    name: str
    weight: float
    cores: int
    mem_mb: int
    median_s: float
    sigma: float
    timeout_s: float

    def mean_s(self) -> float:
        return min(self.timeout_s, self.median_s * math.exp(self.sigma**2 / 2))


@dataclass(frozen=True)
class FunctionMix:
    name: str
    classes: tuple[FunctionClass, ...]

    def mean_core_seconds(self) -> float:
        tw = sum(c.weight for c in self.classes)
        return sum(c.weight * c.cores * c.mean_s() for c in self.classes) / tw

    @classmethod
    def load(cls, spec: str) -> "FunctionMix":
        """A preset name, or a JSON file ``{"name": ..., "functions": [{name, weight, cores,
        mem_mb, median_s, sigma, timeout_s}, ...]}``."""
        if spec in PRESETS:
            return PRESETS[spec]
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"unknown mix {spec!r}: not a preset ({', '.join(PRESETS)}) nor a file")
        try:
            doc = json.loads(path.read_text())
            classes = tuple(
                FunctionClass(
                    name=str(f["name"]), weight=float(f.get("weight", 1.0)),
                    cores=int(f["cores"]), mem_mb=int(f["mem_mb"]),
                    median_s=float(f["median_s"]), sigma=float(f.get("sigma", 0.0)),
                    timeout_s=float(f["timeout_s"]),
                )
                for f in doc["functions"]
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"mix file {spec}: {exc!r}; expected {{'functions': [{{name, cores, "
                             f"mem_mb, median_s, sigma, timeout_s, weight}}]}}") from exc
        bad = [c.name for c in classes if c.cores < 1 or c.mem_mb < 0 or c.median_s <= 0
               or c.timeout_s <= 0 or c.weight <= 0]
        if not classes or bad:
            raise ValueError(f"mix file {spec}: no functions or invalid values in {bad}")
        return cls(str(doc.get("name", path.stem)), classes)


PRESETS: dict[str, FunctionMix] = {
    "short": FunctionMix("short", (FunctionClass("inference", 1.0, 1, 512, 2.0, 0.5, 30.0),)),
    "mixed": FunctionMix("mixed", (
        FunctionClass("inference", 0.6, 1, 512, 2.0, 0.5, 30.0),
        FunctionClass("transform", 0.3, 2, 2048, 30.0, 0.8, 300.0),
        FunctionClass("simulation", 0.1, 4, 4096, 300.0, 0.6, 1800.0),
    )),
    "long": FunctionMix("long", (FunctionClass("batchlet", 1.0, 1, 1024, 600.0, 0.5, 3600.0),)),
}


@dataclass
class SimConfig:
    mix: FunctionMix = PRESETS["mixed"]
    opt_in: float = 1.0
    seed: int = 0
    budget: int = 50_000  # expected simulated functions per scenario
    sample_rate: Optional[float] = None  # None: chosen from budget
    mem_per_core_mb: int = 4096
    default_mem_used_share: float = 0.195  # Piz Daint: 80.5 % of memory free (paper)
    assumed_cpu_share: Optional[float] = None  # for traces without CPU time
    queue_depth: int = 16
    users: int = 4
    bin_s: float = 86400.0  # width of the recovered-over-time series
    slack: float = 0.0  # how far the input may be out of submit order (s)


def _unit(seed: int, salt: str, job_id: str) -> float:
    return zlib.crc32(f"{seed}:{salt}:{job_id}".encode()) / 2**32


def lend_of(job: JobRecord, cfg: SimConfig) -> Optional[tuple[int, int]]:
    """(cores, memory MB) the job would lend if it opted in, or None if nothing."""
    if job.run is None or job.run <= 0 or job.procs is None or job.start is None:
        return None
    if job.cpu_per_proc is not None:
        u = min(1.0, job.cpu_per_proc / job.run)
    elif cfg.assumed_cpu_share is not None:
        u = cfg.assumed_cpu_share
    else:
        return None
    k = idle_cores(job.procs, u)
    if k < 1:
        return None
    if job.mem_used_kb is not None and job.mem_req_kb:
        m = min(1.0, job.mem_used_kb / job.mem_req_kb)
    else:
        m = cfg.default_mem_used_share
    return k, int(job.procs * cfg.mem_per_core_mb * (1.0 - m))


@dataclass
class _Slot:
    free_cpus: list[int]
    free_mem: int
    lend_end: Optional[float]
    end: float


@dataclass
class ScenarioResult:
    walltime_aware: bool
    place_calls: int = 0
    placements: int = 0
    completions: int = 0
    evictions: int = 0
    recovered_core_s: float = 0.0
    recovered_gb_s: float = 0.0
    lost_core_s: float = 0.0  # core-seconds of evicted (lost) work
    series: dict[int, float] = field(default_factory=dict)  # time bin -> recovered core-s


class _Engine:
    """Simulated co-scheduler state for one scenario; ``place`` decides, we keep books."""

    def __init__(self, aware: bool, cfg: SimConfig, rng: random.Random):
        self.aware = aware
        self.cfg = cfg
        self.rng = rng
        self.slots: dict[str, _Slot] = {}
        self.events: list[tuple] = []  # (time, kind 0 completion / 1 job end, seq, payload)
        self.seq = 0
        self.queue: dict[int, PendingInvocation] = {}
        self.next_id = 0
        self.classes = {c.name: c for c in cfg.mix.classes}
        self._names = [c.name for c in cfg.mix.classes]
        self._weights = [c.weight for c in cfg.mix.classes]
        self.res = ScenarioResult(walltime_aware=aware)

    def _push(self, t: float, kind: int, payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, payload))

    def advance(self, t: float) -> None:
        """Process every event strictly before ``t``, ticking once per event time."""
        ev = self.events
        while ev and ev[0][0] < t:
            now = ev[0][0]
            while ev and ev[0][0] == now:
                _, kind, _, p = heapq.heappop(ev)
                if kind == 0:
                    slot_id, cpus, mem = p
                    slot = self.slots.get(slot_id)
                    if slot is not None:
                        slot.free_cpus.extend(cpus)
                        slot.free_cpus.sort()
                        slot.free_mem += mem
                else:
                    self.slots.pop(p, None)
            self._tick(now)

    def start_job(self, t: float, job_id: str, cores: int, mem_mb: int,
                  lend_end: Optional[float], end: float) -> None:
        self.advance(t)
        self.slots[job_id] = _Slot(list(range(cores)), mem_mb, lend_end if self.aware else None, end)
        self._push(end, 1, job_id)
        self._tick(t)

    def finish(self) -> None:
        self.advance(math.inf)

    def _tick(self, now: float) -> None:
        views = [
            SlotView(sid, list(s.free_cpus), s.free_mem, s.lend_end)
            for sid, s in self.slots.items()
            if s.free_cpus and s.end > now
        ]
        if not views:
            return
        rng = self.rng
        # Saturated demand: enough queued to fill every free core, plus queue_depth of choice.
        target = self.cfg.queue_depth + sum(len(v.free_cpus) for v in views)
        while len(self.queue) < target:
            name = rng.choices(self._names, self._weights)[0]
            c = self.classes[name]
            self.next_id += 1
            self.queue[self.next_id] = PendingInvocation(
                self.next_id, rng.randrange(self.cfg.users), name, c.cores, c.mem_mb,
                c.timeout_s, submitted_at=now)
        self.res.place_calls += 1
        placements = scheduler.place(list(self.queue.values()), views, now)
        res = self.res
        for pl in placements:
            inv = self.queue.pop(pl.invocation_id)
            slot = self.slots[pl.slot_id]
            for cpu in pl.cpus:
                slot.free_cpus.remove(cpu)
            slot.free_mem -= pl.mem_mb
            c = self.classes[inv.function]
            d = min(c.timeout_s, rng.lognormvariate(math.log(c.median_s), c.sigma))
            res.placements += 1
            if now + d > slot.end:  # the job ends first: evicted, work lost, cores gone
                res.evictions += 1
                res.lost_core_s += inv.cores * (slot.end - now)
                continue
            res.completions += 1
            res.recovered_core_s += inv.cores * d
            res.recovered_gb_s += pl.mem_mb / 1024.0 * d
            b = int((now + d) // self.cfg.bin_s)
            res.series[b] = res.series.get(b, 0.0) + inv.cores * d
            self._push(now + d, 0, (pl.slot_id, pl.cpus, pl.mem_mb))


def simulate(jobs_factory: Callable[[], Iterable[JobRecord]], cfg: SimConfig) -> dict:
    """Replay the jobs (``jobs_factory()`` may be called twice: pre-pass and replay)."""
    if not 0.0 <= cfg.opt_in <= 1.0:
        raise ValueError("opt_in must be within [0, 1]")

    def opted(job: JobRecord) -> Optional[tuple[int, int]]:
        if _unit(cfg.seed, "opt", job.job_id) >= cfg.opt_in:
            return None
        return lend_of(job, cfg)

    rate = cfg.sample_rate
    if rate is None:
        spare = 0.0
        for job in jobs_factory():
            lend = opted(job)
            if lend:
                spare += lend[0] * job.run
        rate = 1.0 if spare <= 0 else min(1.0, cfg.budget * cfg.mix.mean_core_seconds() / spare)

    engines = [_Engine(True, cfg, random.Random(cfg.seed)), _Engine(False, cfg, random.Random(cfg.seed))]
    starts: list[tuple] = []
    spare_all = spare_sample = 0.0
    opted_jobs = sampled_jobs = late = 0
    last = -math.inf

    def release(watermark: float) -> None:
        nonlocal last
        while starts and starts[0][0] < watermark:
            t, jid, cores, mem, lend_end, end = heapq.heappop(starts)
            last = t
            for e in engines:
                e.start_job(t, jid, cores, mem, lend_end, end)

    for job in jobs_factory():
        lend = opted(job)
        if lend is None:
            continue
        opted_jobs += 1
        spare_all += lend[0] * job.run
        if _unit(cfg.seed, "sample", job.job_id) >= rate:
            continue
        if job.start < last:
            late += 1
            continue
        sampled_jobs += 1
        spare_sample += lend[0] * job.run
        lend_end = job.start + job.req_time if job.req_time else None
        heapq.heappush(starts, (job.start, job.job_id, lend[0], lend[1], lend_end, job.start + job.run))
        release((job.submit if job.submit is not None else job.start) - cfg.slack)
    release(math.inf)
    for e in engines:
        e.finish()

    scale = spare_all / spare_sample if spare_sample > 0 else 0.0
    out: dict = {
        "mix": {"name": cfg.mix.name, "functions": [asdict(c) for c in cfg.mix.classes]},
        "opt_in": cfg.opt_in,
        "seed": cfg.seed,
        "sample_rate": rate,
        "opted_in_jobs": opted_jobs,
        "sampled_jobs": sampled_jobs,
        "late_jobs": late,
        "spare_core_seconds": spare_all,
        "spare_core_seconds_sampled": spare_sample,
        "scale": scale,
        "bin_s": cfg.bin_s,
        "scenarios": {},
    }
    for e in engines:
        r = e.res
        key = "walltime_aware" if r.walltime_aware else "walltime_unaware"
        out["scenarios"][key] = {
            "simulated": {k: v for k, v in asdict(r).items() if k not in ("series", "walltime_aware")},
            "estimated_total": {
                "recovered_core_seconds": r.recovered_core_s * scale,
                "recovered_gb_seconds": r.recovered_gb_s * scale,
                "completions": r.completions * scale,
                "evictions": r.evictions * scale,
                "lost_core_seconds": r.lost_core_s * scale,
            },
            "recovered_share_of_spare": r.recovered_core_s / spare_sample if spare_sample > 0 else None,
            "eviction_share": r.evictions / r.placements if r.placements else None,
            "series": [[b * cfg.bin_s, v * scale] for b, v in sorted(r.series.items())],
        }
    return out
