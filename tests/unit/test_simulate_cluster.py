"""The cluster simulator's trace model (bench/simulate_cluster.py, docs/simulate.md): jobs
of an SWF log become lends on nodes, each until the job's time limit and revoked at its
end; copies of the trace's machine never give one node two jobs at once."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import simulate_cluster as S  # noqa: E402


def _swf(path: Path, jobs: list[tuple[float, float, int, float]]) -> Path:
    """An SWF log of a 4-processor machine: (submit, run, procs, requested time) per job."""
    lines = ["; MaxProcs: 4"]
    for i, (submit, run, procs, req) in enumerate(jobs, 1):
        fields = [i, submit, 0, run, procs, -1, -1, procs, req, -1, 1, 1, 1, 1, 1, -1, -1, -1]
        lines.append(" ".join(str(f) for f in fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jobs_become_lends_until_their_limit_revoked_at_their_end(tmp_path):
    trace = _swf(tmp_path / "t.swf", [(0, 600, 2, 1200), (0, 600, 2, 300), (300, 600, 4, 900),
                                      (700, 300, 1, 600), (10_000, 60, 1, 60)])
    lends = S.lend_timeline(trace, nodes=8, duration_s=200, speed=60, seed=3)  # the window holds the log
    assert set(lends) == set(range(8))
    for node, held in lends.items():
        spans = sorted((start, end) for start, end, _, _ in held)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"node {node} lends to two jobs at once"
        for start, end, limit, _ in held:
            assert start <= end <= limit  # a limit shorter than the run (bad data) is the end
    jobs = [job for held in lends.values() for *_, job in held]
    # two copies of the machine; per copy every processor of every job that fits (first fit):
    # the 4-processor job starts while the first two hold all 4 nodes, and is left out
    assert len(jobs) == 2 * (2 + 2 + 1 + 1)
    assert any(limit > end for held in lends.values() for _, end, limit, _ in held)  # some end early
