"""The remote-memory side of bench/bench_colocation.py: the reader's bandwidth inside hpcc's
window, from its (time, bytes) samples (bench/colocation_memory.py; the reader itself runs
against a real cluster in the benchmark)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import colocation_memory as cm  # noqa: E402

SAMPLES = [(100.0, 0), (101.0, 100e6), (102.0, 300e6), (103.0, 300e6), (104.0, 500e6)]


def test_bandwidth_is_taken_inside_the_window_by_interpolation():
    doc = {"samples": SAMPLES, "bad_blocks": 0, "reads": 125, "error": None}
    fig = cm.reader_figures(doc, start=100.5, end=103.5, size=1 << 30, block=4 << 20)
    # bytes at 100.5: 50 MB; at 103.5: 400 MB -> 350 MB in 3 s
    assert fig["read_mb_per_s"] == pytest.approx(350 / 3)
    assert fig["bad_blocks"] == 0 and fig["error"] is None and fig["size"] == 1 << 30


def test_no_figure_when_the_reader_did_not_cover_the_window():
    doc = {"samples": SAMPLES, "error": "RemoteMemoryRevoked: the lend ended"}
    assert cm.reader_figures(doc, start=95.0, end=103.0, size=1, block=1)["read_mb_per_s"] is None
    assert cm.reader_figures(doc, start=101.0, end=110.0, size=1, block=1)["read_mb_per_s"] is None
    assert cm.reader_figures({"samples": []}, 100.0, 101.0, 1, 1)["read_mb_per_s"] is None
    assert cm.reader_figures(doc, 101.0, 103.0, 1, 1)["error"].startswith("RemoteMemoryRevoked")
