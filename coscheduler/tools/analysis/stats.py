"""Streaming statistics over a job trace: utilisation shares, durations, idle periods.

Everything here is O(1) memory in the number of jobs: sums, fixed-bin histograms, and for
the idle periods a heap of the jobs that are queued or running at the stream's current time.

Definitions (per job j with run time r_j > 0 and p_j allocated processors; SWF field
numbers in brackets; a job missing a field is left out of the figures that need it and
counted in ``missing``):

- core-seconds ``w_j = p_j [5] * r_j [4]``.
- CPU used share ``u_j = min(1, c_j [6] / r_j)``: the average CPU seconds per processor over
  the run time (``c_j > r_j`` happens in real logs; it is clipped and counted).
  *Per job*: the plain mean of ``u_j``. *By core-seconds*: ``sum w_j u_j / sum w_j``.
  ``cpu_share_raw`` is the unclipped ``sum p_j c_j / sum w_j``.
- memory used share ``m_j = min(1, mu_j [7] / mr_j [10])`` for jobs with both (clipped and
  counted likewise); per job and by core-seconds as above; free memory share = 1 - used.
- idle cores of a job ``floor(p_j (1 - u_j))`` - what an ``auto`` opt-in would lend - and its
  *lend window* = ``r_j`` (the span that spare capacity exists).
- run time vs requested: ``r_j / t_j [9]`` for jobs with a requested time (log bins).
- idle periods (the paper's "idle node periods"): the cluster has C processors (SWF header
  ``MaxProcs``, or ``--capacity``); at time t, ``free(t) = max(0, C - sum of p_j of running
  jobs)``. For each level k = 1..C, an idle period is a maximal interval in which
  ``free(t) >= k``. This is the per-processor gap between jobs when each starting job takes
  the most recently freed processors, and needs no processor assignment (SWF has none).
  Periods open at the first or last event of the trace are censored: counted apart, not
  in the distribution. Lengths are reported per period and weighted by idle
  processor-seconds. ``cluster_idle_share = integral free(t) dt / (C * span)``.

Quantiles come from fixed bins: log-spaced (``PER_DECADE`` per decade, relative error
<= 10**(1/PER_DECADE) - 1, i.e. < 4.7 %) for durations, linear width 0.005 for shares. Shares
below thresholds (e.g. idle periods < 10 min) are exact: counted against the threshold
itself, not read from bins.
"""
from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .records import JobRecord

PER_DECADE = 50
DURATION_THRESHOLDS = (60.0, 300.0, 600.0, 1800.0, 3600.0, 86400.0)


class Histogram:
    """Weighted fixed-bin histogram with exact below-threshold sums, min/max and mean."""

    def __init__(self, edges: list[float], log: bool, thresholds: Iterable[float] = (),
                 durations: bool = True):
        self.edges = edges
        self.log = log
        self.durations = durations  # threshold labels: "10min" (True) or "0.5" (False)
        self.bins = [0.0] * (len(edges) + 1)
        self.thresholds = tuple(sorted(thresholds))
        self.below = [0.0] * len(self.thresholds)
        self.n = 0
        self.total = 0.0
        self.sum_wx = 0.0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def log_bins(cls, lo: float = 1e-3, hi: float = 1e9, thresholds: Iterable[float] = (),
                 durations: bool = True):
        n = int(round(math.log10(hi / lo) * PER_DECADE))
        edges = [lo * 10 ** (i / PER_DECADE) for i in range(n + 1)]
        return cls(edges, log=True, thresholds=thresholds, durations=durations)

    @classmethod
    def linear_bins(cls, lo: float = 0.0, hi: float = 1.0, n: int = 200, thresholds=()):
        edges = [lo + (hi - lo) * i / n for i in range(n + 1)]
        return cls(edges, log=False, thresholds=thresholds, durations=False)

    def add(self, x: float, w: float = 1.0, n: int = 1) -> None:
        """Add ``n`` equal observations ``x`` of total weight ``w``."""
        self.bins[bisect.bisect_right(self.edges, x)] += w
        self.n += n
        self.total += w
        self.sum_wx += w * x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        for i, t in enumerate(self.thresholds):
            if x < t:
                self.below[i] += w

    @property
    def mean(self) -> Optional[float]:
        return self.sum_wx / self.total if self.total > 0 else None

    def share_below(self, t: float) -> Optional[float]:
        if self.total <= 0:
            return None
        return self.below[self.thresholds.index(t)] / self.total

    def quantile(self, q: float) -> Optional[float]:
        if self.total <= 0:
            return None
        target = q * self.total
        acc = 0.0
        for i, c in enumerate(self.bins):
            if c <= 0:
                continue
            if acc + c >= target:
                if i == 0:
                    return self.min
                if i == len(self.edges):
                    return self.max
                lo, hi = self.edges[i - 1], self.edges[i]
                frac = (target - acc) / c
                v = lo * (hi / lo) ** frac if (self.log and lo > 0) else lo + (hi - lo) * frac
                return min(max(v, self.min), self.max)
            acc += c
        return self.max

    def cdf(self) -> list[tuple[float, float]]:
        """(x, share of weight <= x) at the bin edges that carry weight, for plotting."""
        if self.total <= 0:
            return []
        out = [(self.min, 0.0)]
        acc = self.bins[0]
        for i, e in enumerate(self.edges):
            nxt = self.bins[i + 1]
            if nxt > 0 or (acc > 0 and out[-1][1] < acc / self.total):
                out.append((max(e, self.min), acc / self.total))
            acc += nxt
        out.append((self.max, 1.0))
        return out

    def summary(self) -> dict:
        d: dict = {"n": self.n, "weight": self.total}
        if self.total > 0:
            d.update(
                mean=self.mean, min=self.min, max=self.max,
                p10=self.quantile(0.1), p50=self.quantile(0.5), p90=self.quantile(0.9),
                p99=self.quantile(0.99),
            )
            if self.thresholds:
                label = _fmt_t if self.durations else (lambda t: f"{t:g}")
                d["share_below"] = {label(t): self.share_below(t) for t in self.thresholds}
        return d


def _fmt_t(t: float) -> str:
    if t >= 86400 and t % 86400 == 0:
        return f"{int(t // 86400)}d"
    if t >= 3600 and t % 3600 == 0:
        return f"{int(t // 3600)}h"
    if t >= 60 and t % 60 == 0:
        return f"{int(t // 60)}min"
    return f"{t:g}s"


class EventOrder:
    """Reorders job start/end events of a stream that is (nearly) sorted by submit time.

    Jobs are pushed in input order; ``release(watermark)`` yields ``(time, net processor
    change)`` for all event times strictly below the watermark, in time order, with all
    changes at one time summed. The caller's watermark is the current record's submit time
    minus a slack (0 for SWF, sorted by submit): no later record can start earlier. The heap
    holds only jobs queued or running at the watermark. A job that would start before an
    already released time is *late*: counted and left out of the idle-period figures.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int]] = []
        self.last_time = -math.inf
        self.late = 0
        self.peak = 0

    def push(self, start: float, end: float, procs: int) -> None:
        if start < self.last_time:
            self.late += 1
            return
        heapq.heappush(self.heap, (start, procs))
        heapq.heappush(self.heap, (end, -procs))
        if len(self.heap) > self.peak:
            self.peak = len(self.heap)

    def release(self, watermark: float = math.inf):
        heap = self.heap
        while heap and heap[0][0] < watermark:
            t, d = heapq.heappop(heap)
            while heap and heap[0][0] == t:
                d += heapq.heappop(heap)[1]
            self.last_time = t
            yield t, d


class IdleTracker:
    """Idle periods of a C-processor cluster from (time, change in allocated processors)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.allocated = 0
        self.free = capacity
        # stack of [units, since, censored]: the top is the most recently freed processors.
        self.stack: list[list] = []
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.idle_proc_s = 0.0
        self.overcommit_s = 0.0  # seconds during which jobs held more than C processors
        self.periods = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.periods_by_time = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.censored = 0
        self.max_allocated = 0

    def change(self, t: float, delta: int) -> None:
        if self.first is None:  # idle since before the trace: left-censored
            self.first = self.last = t
            self.allocated = delta
            self.max_allocated = max(0, delta)
            self.free = min(self.capacity, max(0, self.capacity - delta))
            if self.free > 0:
                self.stack.append([self.free, t, True])
            return
        else:
            dt = t - self.last
            self.idle_proc_s += self.free * dt
            if self.allocated > self.capacity:
                self.overcommit_s += dt
        self.last = t
        self.allocated += delta
        self.max_allocated = max(self.max_allocated, self.allocated)
        new_free = min(self.capacity, max(0, self.capacity - self.allocated))
        if new_free > self.free:
            self.stack.append([new_free - self.free, t, False])
        elif new_free < self.free:
            need = self.free - new_free
            stack = self.stack
            while need > 0:
                top = stack[-1]
                take = min(need, top[0])
                if top[2]:
                    self.censored += take
                else:
                    length = t - top[1]
                    self.periods.add(length, take, take)  # take periods of this length
                    self.periods_by_time.add(length, take * length, take)
                top[0] -= take
                need -= take
                if top[0] == 0:
                    stack.pop()
        self.free = new_free

    def finish(self) -> None:
        self.censored += sum(u for u, _, _ in self.stack)
        self.stack = []

    def summary(self) -> dict:
        span = (self.last - self.first) if self.first is not None else 0.0
        return {
            "capacity": self.capacity,
            "span_s": span,
            "cluster_idle_share": self.idle_proc_s / (self.capacity * span)
            if span > 0 and self.capacity > 0 else None,
            "overcommit_s": self.overcommit_s,
            "max_allocated": self.max_allocated,
            "censored_periods": self.censored,
            "per_period": self.periods.summary(),
            "by_idle_proc_seconds": self.periods_by_time.summary(),
        }


def idle_cores(procs: int, used_share: float) -> int:
    """Cores a job leaves idle: floor(p (1 - u)), with a guard against float noise."""
    return int(math.floor(procs * (1.0 - used_share) + 1e-9))


@dataclass
class Analysis:
    """Consume ``JobRecord`` values with ``add``; ``finish`` then ``to_dict``."""

    capacity: Optional[int] = None
    slack: float = 0.0  # seconds the input may be out of submit order (0 for SWF)
    records: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    core_s: float = 0.0
    cpu_n: int = 0
    cpu_clipped: int = 0
    cpu_core_s: float = 0.0  # sum of w_j over jobs with CPU data
    cpu_used_core_s: float = 0.0  # sum of w_j u_j (clipped)
    cpu_used_raw: float = 0.0  # sum of p_j c_j (unclipped)
    mem_n: int = 0
    mem_clipped: int = 0
    mem_core_s: float = 0.0
    mem_used_core_s: float = 0.0
    mem_used_kbs: float = 0.0  # sum of p_j mu_j r_j
    mem_req_kbs: float = 0.0  # sum of p_j mr_j r_j
    spare_core_s: float = 0.0  # sum over jobs of idle_cores * r_j
    jobs_with_idle_cores: int = 0
    first_start: Optional[float] = None
    last_end: Optional[float] = None

    def __post_init__(self) -> None:
        self.cpu_job = Histogram.linear_bins()
        self.cpu_w = Histogram.linear_bins()
        self.mem_job = Histogram.linear_bins()
        self.mem_w = Histogram.linear_bins()
        self.durations = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.durations_w = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.walltime = Histogram.log_bins(1e-6, 1e6, thresholds=(0.1, 0.5, 0.9, 1.0), durations=False)
        self.lend_windows = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.lend_windows_w = Histogram.log_bins(thresholds=DURATION_THRESHOLDS)
        self.order = EventOrder()
        self.idle = IdleTracker(self.capacity) if self.capacity else None

    def _miss(self, what: str) -> None:
        self.missing[what] = self.missing.get(what, 0) + 1

    def add(self, job: JobRecord) -> None:
        self.records += 1
        run, procs = job.run, job.procs
        if run is None or procs is None:
            self._miss("run time or processors")
            return
        w = procs * run
        self.core_s += w
        self.durations.add(run)
        self.durations_w.add(run, w)
        if job.req_time:
            self.walltime.add(run / job.req_time)
        else:
            self._miss("requested time")
        if run > 0 and job.cpu_per_proc is not None:
            raw = job.cpu_per_proc / run
            u = min(1.0, raw)
            self.cpu_clipped += raw > 1.0
            self.cpu_n += 1
            self.cpu_core_s += w
            self.cpu_used_core_s += w * u
            self.cpu_used_raw += procs * job.cpu_per_proc
            self.cpu_job.add(u)
            self.cpu_w.add(u, w)
            k = idle_cores(procs, u)
            if k >= 1:
                self.jobs_with_idle_cores += 1
                self.spare_core_s += k * run
                self.lend_windows.add(run)
                self.lend_windows_w.add(run, k * run)
        elif run > 0:
            self._miss("CPU time")
        if run > 0 and job.mem_used_kb is not None and job.mem_req_kb:
            raw = job.mem_used_kb / job.mem_req_kb
            m = min(1.0, raw)
            self.mem_clipped += raw > 1.0
            self.mem_n += 1
            self.mem_core_s += w
            self.mem_used_core_s += w * m
            self.mem_used_kbs += w * job.mem_used_kb
            self.mem_req_kbs += w * job.mem_req_kb
            self.mem_job.add(m)
            self.mem_w.add(m, w)
        elif run > 0:
            self._miss("used or requested memory")
        if job.start is None:
            self._miss("start time")
            return
        end = job.start + run
        if self.first_start is None or job.start < self.first_start:
            self.first_start = job.start
        if self.last_end is None or end > self.last_end:
            self.last_end = end
        if self.idle is not None:
            self.order.push(job.start, end, procs)
            wm = (job.submit if job.submit is not None else job.start) - self.slack
            for t, d in self.order.release(wm):
                self.idle.change(t, d)

    def finish(self) -> None:
        if self.idle is not None:
            for t, d in self.order.release():
                self.idle.change(t, d)
            self.idle.finish()

    def to_dict(self) -> dict:
        def ratio(a: float, b: float) -> Optional[float]:
            return a / b if b > 0 else None

        d: dict = {
            "jobs": self.records,
            "missing": dict(sorted(self.missing.items())),
            "core_seconds": self.core_s,
            "span": {"first_start": self.first_start, "last_end": self.last_end},
            "cpu": {
                "jobs": self.cpu_n,
                "clipped_above_1": self.cpu_clipped,
                "used_share_per_job": self.cpu_job.mean,
                "used_share_by_core_seconds": ratio(self.cpu_used_core_s, self.cpu_core_s),
                "used_share_raw": ratio(self.cpu_used_raw, self.cpu_core_s),
                "per_job": self.cpu_job.summary(),
                "jobs_with_idle_cores": self.jobs_with_idle_cores,
                "spare_core_seconds": self.spare_core_s,
            },
            "memory": {
                "jobs": self.mem_n,
                "clipped_above_1": self.mem_clipped,
                "used_share_per_job": self.mem_job.mean,
                "used_share_by_core_seconds": ratio(self.mem_used_core_s, self.mem_core_s),
                "used_share_raw": ratio(self.mem_used_kbs, self.mem_req_kbs),
                "per_job": self.mem_job.summary(),
            },
            "durations": {
                "per_job": self.durations.summary(),
                "by_core_seconds": self.durations_w.summary(),
            },
            "runtime_vs_requested": self.walltime.summary(),
            "lend_windows": {
                "per_job": self.lend_windows.summary(),
                "by_spare_core_seconds": self.lend_windows_w.summary(),
            },
        }
        if self.idle is not None:
            d["idle_periods"] = self.idle.summary()
            d["idle_periods"]["late_jobs"] = self.order.late
            d["idle_periods"]["peak_heap"] = self.order.peak
        else:
            d["idle_periods"] = None
        return d


def analyze(jobs: Iterable[JobRecord], capacity: Optional[int] = None, slack: float = 0.0) -> Analysis:
    a = Analysis(capacity=capacity, slack=slack)
    for job in jobs:
        a.add(job)
    a.finish()
    return a
