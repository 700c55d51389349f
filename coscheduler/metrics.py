"""What the loop measures of itself: how long each step takes, and what it handled.

Each step's durations go into a bounded ring (the last ``WINDOW``), so percentiles cost
nothing until asked for; counters only grow. The ``stats`` request (root only,
requests.py) returns both: the cluster simulator (bench/simulate_cluster.py) reads them, and
so can a site's monitoring. Owns no socket and no transaction.
"""
from __future__ import annotations

import collections
import time
from typing import Callable

WINDOW = 20_000


class LoopMetrics:
    def __init__(self) -> None:
        self.durations: dict[str, collections.deque[float]] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.monotonic()

    def timed(self, name: str, step: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            step()
        finally:
            ring = self.durations.get(name)
            if ring is None:
                ring = self.durations[name] = collections.deque(maxlen=WINDOW)
            ring.append(time.perf_counter() - t0)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def snapshot(self) -> dict:
        steps = {}
        for name, ring in self.durations.items():
            q = sorted(ring)
            if q:
                steps[name] = {"n": len(q), "p50_s": q[len(q) // 2], "p99_s": q[min(len(q) - 1, int(len(q) * 0.99))],
                               "max_s": q[-1]}
        return {"uptime_s": time.monotonic() - self.started, "steps": steps, "counters": dict(self.counters)}
