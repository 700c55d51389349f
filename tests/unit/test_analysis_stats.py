"""Streaming accumulators: histogram quantiles, event ordering, idle periods."""
from __future__ import annotations

import random

import pytest

from coscheduler.tools.analysis.records import JobRecord
from coscheduler.tools.analysis.stats import PER_DECADE, EventOrder, Histogram, IdleTracker, analyze


def test_log_histogram_quantiles_within_bin_error():
    rng = random.Random(1)
    xs = sorted(rng.lognormvariate(5, 2) for _ in range(20000))
    h = Histogram.log_bins(thresholds=(600.0,))
    for x in xs:
        h.add(x)
    for q in (0.1, 0.5, 0.9, 0.99):
        exact = xs[int(q * len(xs)) - 1]
        assert h.quantile(q) == pytest.approx(exact, rel=10 ** (1 / PER_DECADE) - 1 + 1e-3)
    assert h.share_below(600.0) == sum(x < 600 for x in xs) / len(xs)  # exact, not binned
    assert h.mean == pytest.approx(sum(xs) / len(xs))


def test_event_order_aggregates_and_counts_late():
    o = EventOrder()
    o.push(10, 20, 2)
    o.push(5, 20, 1)
    assert list(o.release(10)) == [(5, 1)]
    o.push(3, 4, 1)  # before an already released time: late
    assert o.late == 1
    assert list(o.release()) == [(10, 2), (20, -3)]


def test_idle_tracker_levels():
    # capacity 4; job A uses 2 from t=0..100, job B uses 4 from t=130..200
    t = IdleTracker(4)
    for time, d in [(0, 2), (100, -2), (130, 4), (200, -4)]:
        t.change(time, d)
    t.finish()
    # levels 3,4 free 0..130 (left-censored), levels 1,2 free 100..130 (30 s each),
    # all free after 200 (right-censored)
    assert t.periods.n == 2 and t.periods.min == 30 and t.periods.max == 30
    assert t.censored == 2 + 4
    s = t.summary()
    assert s["cluster_idle_share"] == pytest.approx((2 * 100 + 4 * 30) / (4 * 200))


def test_idle_tracker_overcommit_clamps():
    t = IdleTracker(2)
    for time, d in [(0, 3), (10, -1), (20, -2), (30, 1), (40, -1)]:
        t.change(time, d)
    t.finish()
    # free: 0 on [0,20), 2 on [20,30), 1 on [30,40): one period of 10 s at level 2
    assert t.overcommit_s == 10
    assert t.periods.n == 1 and t.periods.max == 10


def test_analysis_missing_fields_counted():
    jobs = [
        JobRecord("1", 0, 0, 100, 4, cpu_per_proc=150),  # u clipped at 1
        JobRecord("2", 0, None, 100, 2),  # no start, no cpu
        JobRecord("3", 0, 0, None, 2),
    ]
    d = analyze(jobs, capacity=8).to_dict()
    assert d["cpu"]["clipped_above_1"] == 1
    assert d["cpu"]["used_share_by_core_seconds"] == 1.0
    assert d["cpu"]["used_share_raw"] == pytest.approx(1.5)
    assert d["missing"] == {"CPU time": 1, "requested time": 2, "run time or processors": 1,
                            "start time": 1, "used or requested memory": 2}
