"""Placement tick time (coscheduler.scheduler.place, place_ahead) as slots and the queue grow.

    python bench/bench_placement.py            # up to 10,000 slots x 100,000 queued
    python bench/bench_placement.py --quick

Each row is the median of a few ticks on fresh inputs: slots lend 1-8 cores, 1-16 GiB,
ending 1 min - 2 h from now, 5 % warm for one of the functions; the queue is 20
functions (1-4 cores, 128 MiB - 2 GiB, timeouts 10 s - 1 h) from 50 users, one of
whom submitted half the queue, in 3 priority classes. Three scenarios: "idle" (every
lent core free: the tick places as much as fits), "busy" (10 % of the cores free,
the steady state of a loaded machine) and "busy + dispatch-ahead" (the daemon's
place_ahead on the busy slots, whose used cores carry 1-4 invocations each; the five
functions with a 10 s timeout are short, 10 ms, and may wait 8 deep). The baseline, measured in the same run, is one
pass over the queue that only reads each invocation's cores (the least any placement
must do); "growth" is the factor by which the tick time grows when the size doubles
(2 = linear; O(slots x queue) would give 4 when both double).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coscheduler.scheduler import Lane, PendingInvocation, SlotView, place, place_ahead  # noqa: E402

NOW = 1_700_000_000.0


def make(n_slots: int, n_queue: int, busy: bool, seed: int):
    rng = random.Random(seed)
    fns = [(f"fn{i}", rng.choice((1, 1, 1, 2, 4)), rng.choice((128, 256, 512, 1024, 2048)),
            (10.0, 60.0, 300.0, 3600.0)[i % 4]) for i in range(20)]
    slots = []
    for i in range(n_slots):
        cores = rng.randint(1, 8)
        cpus = list(range(cores))
        if busy:
            cpus = cpus[: 1 if rng.random() < 0.2 else 0] if cores > 1 else []
        lanes = {c: Lane(rng.randint(1, 4), rng.uniform(0.01, 60), rng.choice((128, 256, 512)))
                 for c in range(len(cpus), cores)}
        warm = frozenset({rng.choice(fns)[0]}) if rng.random() < 0.05 else frozenset()
        slots.append(SlotView(f"{i}@n{i % 997}", cpus, rng.randint(1, 16) * 1024,
                              NOW + rng.uniform(60, 7200), warm, lanes))
    queue = []
    for i in range(n_queue):
        user = 0 if rng.random() < 0.5 else rng.randint(1, 49)
        name, cores, mem, timeout = rng.choice(fns)
        queue.append(PendingInvocation(i, user, name, cores, mem, timeout, rng.choice((0, 0, 0, 1, 5)),
                                       NOW - n_queue + i))
    return slots, queue


def baseline(queue) -> float:
    t0 = time.perf_counter()
    total = 0
    for inv in queue:
        total += inv.cores
    return time.perf_counter() - t0


SHORT = {f"fn{i}": 8 for i in range(0, 20, 4)}  # the 10 s-timeout functions: 10 ms each, 8 deep
RUN_TIME = {name: 0.01 for name in SHORT}


def tick(n_slots: int, n_queue: int, busy: bool, repeat: int, ahead: bool = False) -> tuple[float, int, float]:
    times, bases, placed = [], [], 0
    for r in range(repeat):
        slots, queue = make(n_slots, n_queue, busy, seed=r)
        bases.append(baseline(queue))
        t0 = time.perf_counter()
        if ahead:
            placed = len(place_ahead(queue, slots, NOW, depth=SHORT, run_time=RUN_TIME))
        else:
            placed = len(place(queue, slots, NOW))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), placed, statistics.median(bases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one tick each")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [(625, 6_250), (1_250, 12_500), (2_500, 25_000), (5_000, 50_000), (10_000, 100_000)]
    repeat = args.repeat
    if args.quick:
        sizes, repeat = sizes[:3], 1
    scenarios = [("idle (all lent cores free)", False, False), ("busy (10 % of lent cores free)", True, False),
                 ("busy + dispatch-ahead (place_ahead, short functions wait up to 8 deep)", True, True)]
    for title, busy, ahead in scenarios:
        print(f"scenario {title}")
        print(f"{'slots':>7} {'queued':>8} {'placed':>7} {'tick ms':>8} {'growth':>7} "
              f"{'baseline ms':>11} {'x baseline':>10} {'us/queued':>9}")
        prev = None
        for n_slots, n_queue in sizes:
            t, placed, base = tick(n_slots, n_queue, busy, repeat, ahead)
            growth = f"{t / prev:.2f}" if prev else "-"
            print(f"{n_slots:>7} {n_queue:>8} {placed:>7} {t * 1e3:>8.1f} {growth:>7} "
                  f"{base * 1e3:>11.2f} {t / base:>10.1f} {t / n_queue * 1e6:>9.2f}")
            prev = t
        print()


if __name__ == "__main__":
    main()
