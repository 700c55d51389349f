"""The gap between scheduling passes while agents hold work dispatched ahead
(coscheduler/dispatch.py, Dispatcher._gap): half the work expected on the shortest lane
that took an invocation, within [PIPELINED_GAP_S, MAX_PIPELINED_GAP_S]."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from coscheduler.dispatch import MAX_PIPELINED_GAP_S, PIPELINED_GAP_S, Dispatcher
from coscheduler.scheduler import Lane, Placement, SlotView


def _gap(run_s: float, queued: dict[int, Lane], placed_on: list[int], timeout_s: int = 60) -> float:
    hub = SimpleNamespace(stats=SimpleNamespace(run_time={"7": run_s} if run_s else {}))
    views = [SlotView("1@n1", [], 1000, None, queued=queued)]
    placements = [Placement(100 + k, "1@n1", (c,), 10) for k, c in enumerate(placed_on)]
    rows = {p.invocation_id: SimpleNamespace(function_id=7) for p in placements}
    fns = {7: SimpleNamespace(id=7, timeout_s=timeout_s)}
    return Dispatcher(hub)._gap(views, placements, rows, fns)


def test_the_gap_is_half_the_shortest_lane_that_took_work():
    # core 0 holds 20 ms and takes one more of 2 ms; core 1 holds 60 ms and takes one
    lanes = {0: Lane(10, 0.020, 10), 1: Lane(30, 0.060, 10)}
    assert _gap(0.002, lanes, [0, 1]) == pytest.approx(0.011)


def test_the_gap_stays_within_its_bounds():
    assert _gap(0.0001, {0: Lane(1, 0.0001, 10)}, [0]) == PIPELINED_GAP_S  # a nearly empty lane
    assert _gap(0.5, {0: Lane(3, 1.5, 10)}, [0]) == MAX_PIPELINED_GAP_S
    # a function never measured counts its timeout: long, so the bound
    assert _gap(0.0, {}, [0], timeout_s=10) == MAX_PIPELINED_GAP_S
