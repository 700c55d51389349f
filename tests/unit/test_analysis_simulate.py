"""Trace replay: uses the co-scheduler's place(), walltime-aware placement avoids evictions."""
from __future__ import annotations

import json

import pytest

from coscheduler import scheduler
from coscheduler.tools.analysis.records import JobRecord
from coscheduler.tools.analysis.simulate import FunctionClass, FunctionMix, SimConfig, simulate

# One 1-core function that always takes exactly 100 s (sigma 0), timeout 100 s.
FIXED = FunctionMix("fixed", (FunctionClass("f", 1.0, 1, 100, 100.0, 0.0, 100.0),))


def crafted() -> list[JobRecord]:
    # cpu_per_proc 0 -> every core idle. Job a runs to its walltime (250 s, not a multiple
    # of 100): unaware placement starts a third function at t=200 that the job end kills.
    # Job b ends long before its walltime: both scenarios lose the function running then.
    return [
        JobRecord("a", 0, 0, 250, 2, cpu_per_proc=0, req_time=250),
        JobRecord("b", 10, 10, 150, 1, cpu_per_proc=0, req_time=1000),
        JobRecord("c", 20, 20, 1000, 4, cpu_per_proc=900, req_time=2000),  # u=0.9: 0 idle cores
    ]


def cfg(**kw) -> SimConfig:
    base = dict(mix=FIXED, sample_rate=1.0, queue_depth=4)
    base.update(kw)
    return SimConfig(**base)


def test_simulation_calls_the_coschedulers_place(monkeypatch):
    calls = []
    real = scheduler.place

    def counting(pending, slots, now):
        calls.append(now)
        return real(pending, slots, now)

    monkeypatch.setattr(scheduler, "place", counting)
    out = simulate(crafted, cfg())
    assert calls, "simulate must call coscheduler.scheduler.place"
    total = sum(s["simulated"]["place_calls"] for s in out["scenarios"].values())
    assert len(calls) == total


def test_walltime_aware_has_no_more_evictions():
    out = simulate(crafted, cfg())
    aware = out["scenarios"]["walltime_aware"]["simulated"]
    unaware = out["scenarios"]["walltime_unaware"]["simulated"]
    # a: 2 cores x 2 functions complete in both; unaware places 2 more at t=200, evicted at 250.
    # b: one function completes (10..110), the next (110..210) is evicted at 160 in both.
    assert aware["completions"] == 5 and unaware["completions"] == 5
    assert aware["evictions"] == 1 and unaware["evictions"] == 3
    assert aware["evictions"] <= unaware["evictions"]
    assert aware["recovered_core_s"] == pytest.approx(500)
    assert unaware["lost_core_s"] == pytest.approx(2 * 50 + 50)
    assert out["spare_core_seconds"] == 2 * 250 + 150 and out["scale"] == 1.0
    assert out["scenarios"]["walltime_aware"]["recovered_share_of_spare"] == pytest.approx(500 / 650)


def test_opt_in_zero_lends_nothing():
    out = simulate(crafted, cfg(opt_in=0.0))
    assert out["opted_in_jobs"] == 0
    assert out["scenarios"]["walltime_aware"]["simulated"]["placements"] == 0


def test_sampling_bounds_work_and_scales_totals():
    jobs = [JobRecord(str(i), i * 10.0, i * 10.0, 500, 4, cpu_per_proc=0, req_time=600)
            for i in range(400)]
    full = simulate(lambda: jobs, cfg())
    part = simulate(lambda: jobs, cfg(sample_rate=None, budget=400))
    assert part["sample_rate"] < 0.5
    assert part["sampled_jobs"] < full["sampled_jobs"] == 400
    est = part["scenarios"]["walltime_aware"]["estimated_total"]["recovered_core_seconds"]
    exact = full["scenarios"]["walltime_aware"]["simulated"]["recovered_core_s"]
    assert est == pytest.approx(exact, rel=0.05)  # all jobs alike: the estimator is ~exact


def test_mix_file_and_errors(tmp_path):
    p = tmp_path / "mix.json"
    p.write_text(json.dumps({"name": "mine", "functions": [
        {"name": "g", "cores": 2, "mem_mb": 256, "median_s": 5, "sigma": 0.3, "timeout_s": 60}]}))
    mix = FunctionMix.load(str(p))
    assert mix.name == "mine" and mix.classes[0].cores == 2
    with pytest.raises(ValueError, match="unknown mix"):
        FunctionMix.load("nope")
    p.write_text('{"functions": [{"name": "g"}]}')
    with pytest.raises(ValueError, match="mix file"):
        FunctionMix.load(str(p))
