"""The lend-end rule on both sides: a lend ends at the job's end minus ``until`` minutes,
as the co-scheduler's slot (``Slot.lend_end``) and the agent (``_lend_left``, which hands
back a waiting invocation that could no longer finish) compute it."""
from __future__ import annotations

import pytest

from coscheduler.db.models import Slot
from faas_runtime import invocations


@pytest.mark.parametrize("end_time,until_min,lend_end", [
    (10_000.0, 0, 10_000.0), (10_000.0, 2, 9_880.0), (10_000.0, 1, 9_940.0), (None, 5, None),
])
def test_slot_lend_end(end_time, until_min, lend_end):
    assert Slot(end_time=end_time, until_min=until_min).lend_end == lend_end


@pytest.fixture
def now(monkeypatch):
    monkeypatch.setattr(invocations.time, "time", lambda: 1_000_000.0)
    return 1_000_000.0


@pytest.mark.parametrize("record,left", [
    ({"end_time": 1_000_600, "until_min": 0}, 600.0),
    ({"end_time": 1_000_600, "until_min": 8}, 120.0),
    ({"end_time": 1_000_600, "until_min": 1}, 540.0),
    ({"end_time": 1_000_600}, 600.0),
    ({"end_time": 1_000_600, "until_min": None}, 600.0),
    ({"end_time": 1_000_030, "until_min": 1}, -30.0),
    ({"end_time": 0, "until_min": 8}, float("inf")),  # Slurm gave no end: no limit known
    ({"end_time": None}, float("inf")),
    ({}, float("inf")),
])
def test_agent_lend_left(now, record, left):
    assert invocations._lend_left(record) == left
