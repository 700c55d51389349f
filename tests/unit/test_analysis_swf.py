"""SWF reader and the figures on a real Parallel Workloads Archive log vs a plain recomputation."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from coscheduler.tools.analysis.stats import analyze
from coscheduler.tools.analysis.swf import SWFReader

SWF_DIR = Path("/work/shared/data/swf")

SYNTH = """\
; Version: 2.2
; Computer: Test
; MaxProcs: 8
; UnixStartTime: 1000
    1      0   0  100  4  50.0  100  4  200  200  1  1 1 1 1 -1 -1 -1
    2     10   5  600  2  600   -1   2  600   -1  1  2 1 1 1 -1 -1 -1
this line is garbage
    3     20   0   -1  2   -1   -1   2   -1   -1  0  2 1 1 1 -1 -1 -1
    4     30   0   50  1  10 20 1 100
    5     40   0  200  8  abc   -1   8  400   -1  1  2 1 1 1 -1 -1 -1
"""


def test_reads_fields_and_header():
    r = SWFReader(io.StringIO(SYNTH))
    jobs = list(r)
    assert [j.job_id for j in jobs] == ["1", "2", "3"]
    j1, j2, j3 = jobs
    assert (j1.submit, j1.start, j1.run, j1.procs) == (0.0, 0.0, 100.0, 4)
    assert (j1.cpu_per_proc, j1.mem_used_kb, j1.req_time, j1.mem_req_kb) == (50.0, 100.0, 200.0, 200.0)
    assert j2.start == 15.0 and j2.mem_used_kb is None and j2.mem_req_kb is None
    assert j3.run is None and j3.cpu_per_proc is None and j3.req_time is None
    assert r.max_procs == 8 and r.unix_start_time == 1000.0
    assert r.header["Computer"] == "Test"


def test_malformed_lines_are_counted_not_raised():
    r = SWFReader(io.StringIO(SYNTH))
    list(r)
    assert r.issues.count == 3
    assert r.issues.by_reason == {
        "expected 18 fields, got 4": 1, "expected 18 fields, got 9": 1, "non-numeric field": 1}
    assert [e[0] for e in r.issues.examples] == [7, 9, 10]


def test_reads_gzip(tmp_path):
    p = tmp_path / "t.swf.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(SYNTH)
    assert len(list(SWFReader(p))) == 3


def test_synthetic_figures():
    r = SWFReader(io.StringIO(SYNTH))
    a = analyze(r, capacity=8)
    d = a.to_dict()
    # job 1: u = 0.5, w = 400; job 2: u = 1, w = 1200
    assert d["cpu"]["jobs"] == 2
    assert d["cpu"]["used_share_per_job"] == pytest.approx(0.75)
    assert d["cpu"]["used_share_by_core_seconds"] == pytest.approx((400 * 0.5 + 1200) / 1600)
    assert d["memory"]["jobs"] == 1 and d["memory"]["used_share_per_job"] == pytest.approx(0.5)
    assert d["cpu"]["spare_core_seconds"] == pytest.approx(2 * 100)
    assert d["missing"]["run time or processors"] == 1


def _plain(path: Path):
    """Independent recomputation straight from the SWF fields (no package code)."""
    n = cw = cu = craw = cj = 0.0
    mw = mu = mj = 0.0
    cpu_jobs = mem_jobs = 0
    events: dict[float, int] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith(";") or not line.strip():
                continue
            f = [float(x) for x in line.split()]
            n += 1
            submit, wait, run, procs, cpu, mem, req_mem = f[1], f[2], f[3], f[4], f[5], f[6], f[9]
            if run > 0 and procs > 0 and cpu >= 0:
                u = min(1.0, cpu / run)
                cpu_jobs += 1
                cw += procs * run
                cu += procs * run * u
                craw += procs * cpu
                cj += u
            if run > 0 and procs > 0 and mem >= 0 and req_mem > 0:
                m = min(1.0, mem / req_mem)
                mem_jobs += 1
                mw += procs * run
                mu += procs * run * m
                mj += m
            if run >= 0 and procs > 0 and submit >= 0 and wait >= 0:
                s = submit + wait
                events[s] = events.get(s, 0) + int(procs)
                events[s + run] = events.get(s + run, 0) - int(procs)
    return dict(n=n, cpu_jobs=cpu_jobs, cpu_w=cu / cw if cw else None, cpu_raw=craw / cw if cw else None,
                cpu_job=cj / cpu_jobs if cpu_jobs else None, mem_jobs=mem_jobs,
                mem_w=mu / mw if mw else None, mem_job=mj / mem_jobs if mem_jobs else None,
                events=events)


def _plain_idle(events: dict[float, int], capacity: int):
    """Idle periods by the definition: per level k, maximal intervals with free >= k,
    censored if they touch the first or last event time."""
    times = sorted(events)
    free, alloc = [], 0
    for t in times:
        alloc += events[t]
        free.append(min(capacity, max(0, capacity - alloc)))
    t0, tn = times[0], times[-1]
    idle_integral = sum(free[i] * (times[i + 1] - times[i]) for i in range(len(times) - 1))
    total = under10 = 0
    for k in range(1, capacity + 1):
        since = t0  # free == capacity before the first event
        for t, f in zip(times, free):
            if f >= k and since is None:
                since = t
            elif f < k and since is not None:
                if since != t0:
                    total += 1
                    under10 += (t - since) < 600
                since = None
    return total, under10, idle_integral / (capacity * (tn - t0))


@pytest.mark.parametrize("name", ["CTC-SP2-1996-3.1-cln", "LANL-CM5-1994-4.1-cln"])
def test_real_log_utilisation_matches_plain_computation(name):
    path = SWF_DIR / f"{name}.swf.gz"
    if not path.exists():
        pytest.fail(f"shipped log missing: {path}")
    r = SWFReader(path)
    d = analyze(r, capacity=1024).to_dict()
    ref = _plain(path)
    assert r.issues.count == 0
    assert d["jobs"] == ref["n"]
    assert d["cpu"]["jobs"] == ref["cpu_jobs"]
    assert d["memory"]["jobs"] == ref["mem_jobs"]
    for ours, theirs in [
        (d["cpu"]["used_share_by_core_seconds"], ref["cpu_w"]),
        (d["cpu"]["used_share_raw"], ref["cpu_raw"]),
        (d["cpu"]["used_share_per_job"], ref["cpu_job"]),
        (d["memory"]["used_share_by_core_seconds"], ref["mem_w"]),
        (d["memory"]["used_share_per_job"], ref["mem_job"]),
    ]:
        if theirs is None:
            assert ours is None
        else:
            assert ours == pytest.approx(theirs, rel=1e-9)


def test_real_log_idle_periods_match_definition():
    path = SWF_DIR / "KTH-SP2-1996-2.1-cln.swf.gz"
    r = SWFReader(path)
    a = analyze(r, capacity=100)
    ip = a.to_dict()["idle_periods"]
    total, under10, idle_share = _plain_idle(_plain(path)["events"], 100)
    assert ip["per_period"]["n"] == total
    assert ip["per_period"]["share_below"]["10min"] == pytest.approx(under10 / total, rel=1e-12)
    assert ip["cluster_idle_share"] == pytest.approx(idle_share, rel=1e-9)
    assert ip["late_jobs"] == 0
