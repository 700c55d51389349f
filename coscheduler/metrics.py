"""What the loop measures of itself and of the work it runs.

- each step's durations, in a bounded ring (the last ``WINDOW``), so percentiles cost
  nothing until asked for; and the CPU time the loop's thread spent in them (a step slow
  in wall time but not in CPU time waited: for the database, or for a loaded host's CPUs);
- counters that only grow (heartbeats, dispatched, evictions, results by outcome, the
  core-seconds functions ran on lent cores);
- histograms of the queue wait (submit to dispatch) and of run times, in fixed buckets.

The ``stats`` request and ``faas-admin status`` read ``snapshot()``; the Prometheus
endpoint (prometheus.py) reads the same under the lock, from its own thread. Owns no
socket and no transaction.
"""
from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Callable

WINDOW = 20_000
# Seconds: from sub-millisecond dispatches to hour-long functions.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
RATE_WINDOW_S = 60.0  # "throughput over the last minute"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bucket (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value (the last: +Inf); once per invocation.
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def snapshot(self) -> dict:
        return {"buckets": list(BUCKETS), "counts": list(self.counts), "sum": self.sum}


class LoopMetrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.durations: dict[str, collections.deque[float]] = {}
        self.cpu_times: dict[str, collections.deque[float]] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.histograms: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.completions: collections.deque[float] = collections.deque()  # monotonic times, last minute
        self.started = time.monotonic()

    def timed(self, name: str, step: Callable[[], None]) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            step()
        finally:
            with self.lock:
                ring = self.durations.get(name)
                if ring is None:
                    ring = self.durations[name] = collections.deque(maxlen=WINDOW)
                    self.cpu_times[name] = collections.deque(maxlen=WINDOW)
                ring.append(time.perf_counter() - t0)
                self.cpu_times[name].append(time.thread_time() - c0)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def observe(self, name: str, value: float) -> None:
        with self.lock:
            self.histograms[name].observe(value)

    def result(self, outcome: str, run_s: object, cores: int) -> None:
        """A function ended (ok, error or timeout) after ``run_s`` on ``cores`` lent cores."""
        now = time.monotonic()
        with self.lock:
            self.counters[f"results_{outcome}"] += 1
            self.completions.append(now)
            while self.completions and self.completions[0] < now - RATE_WINDOW_S:
                self.completions.popleft()
            if isinstance(run_s, (int, float)) and not isinstance(run_s, bool) and 0 <= run_s < 1e7:
                self.histograms["run_seconds"].observe(float(run_s))
                self.counters["used_core_seconds"] += float(run_s) * max(1, cores)

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self.lock:
            steps = {}
            for name, ring in self.durations.items():
                q, cpu = sorted(ring), sorted(self.cpu_times[name])
                if q:
                    steps[name] = {"n": len(q), "p50_s": q[len(q) // 2],
                                   "p99_s": q[min(len(q) - 1, int(len(q) * 0.99))], "max_s": q[-1],
                                   "cpu_p50_s": cpu[len(cpu) // 2], "cpu_p99_s": cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))]}
            recent = sum(1 for t in self.completions if t >= now - RATE_WINDOW_S)
            return {"uptime_s": now - self.started, "steps": steps, "counters": dict(self.counters),
                    "histograms": {k: h.snapshot() for k, h in self.histograms.items()},
                    "completed_last_minute": recent}
