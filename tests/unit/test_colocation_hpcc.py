"""bench/colocation_hpcc.py: the hpccinf.txt it writes, its reading of hpccoutf.txt (a real
run's summary, tests/unit/data/hpcc), and the statistics of the co-location benchmark."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import colocation_hpcc as hpcc  # noqa: E402

SAMPLE = Path(__file__).resolve().parent / "data" / "hpcc" / "hpccoutf-np1-n2000.txt"


def test_a_real_summary_gives_every_kernel_in_its_unit():
    figures = hpcc.parse_file(SAMPLE)
    assert figures == pytest.approx({
        "HPL": 2.88078, "DGEMM": 3.63737, "STREAM Triad": 33.1116, "RandomAccess": 0.110015,
        "MPI RandomAccess": 0.0111044, "FFT": 3.37327, "MPI FFT": 2.58349, "PTRANS": 1.42827})


def test_the_last_of_appended_runs_counts():
    text = SAMPLE.read_text()
    first = text.replace("HPL_Tflops=0.00288078", "HPL_Tflops=0.5")
    assert hpcc.parse(first + text)["HPL"] == pytest.approx(2.88078)
    assert hpcc.parse(text + first)["HPL"] == pytest.approx(500.0)


def test_kernels_that_did_not_run_are_left_out():
    text = SAMPLE.read_text().replace("PTRANS_GBs=1.42827", "PTRANS_GBs=-1")
    assert "PTRANS" not in hpcc.parse(text)


@pytest.mark.parametrize("edit,why", [
    (("Success=1", "Success=0"), "Success='0'"),
    (("HPL_RnormI=3.16949e-12", "HPL_RnormI=1.0"), "residual check"),
    (("MPIRandomAccess_ErrorsFraction=0", "MPIRandomAccess_ErrorsFraction=0.5"), "MPIRandomAccess_ErrorsFraction"),
    (("StarSTREAM_Triad=33.1116", "StarSTREAM_Triad=nan?"), "StarSTREAM_Triad='nan?' is not a number"),
    (("StarFFT_Gflops=3.37327\n", ""), "StarFFT_Gflops missing"),
    (("End of Summary section.", ""), "no complete summary section"),
])
def test_a_failed_or_cut_run_is_refused_with_the_reason(edit, why):
    with pytest.raises(hpcc.HpccOutputError, match=why.replace("?", r"\?").replace("(", r"\(")):
        hpcc.parse(SAMPLE.read_text().replace(*edit))


def test_a_missing_output_file_says_so(tmp_path):
    with pytest.raises(hpcc.HpccOutputError, match="does not exist"):
        hpcc.parse_file(tmp_path / "hpccoutf.txt")


def test_the_input_file_sets_size_block_and_grid():
    lines = hpcc.input_file(3000, 96, 6).splitlines()
    assert lines[5].split()[0] == "3000" and lines[7].split()[0] == "96"
    assert (lines[10].split()[0], lines[11].split()[0]) == ("2", "3")
    assert len(lines) == 36  # hpcc reads fixed line positions


@pytest.mark.parametrize("ranks,grid", [(1, (1, 1)), (4, (2, 2)), (6, (2, 3)), (7, (1, 7)), (48, (6, 8))])
def test_process_grid_is_the_most_square(ranks, grid):
    assert hpcc.process_grid(ranks) == grid


@pytest.mark.parametrize("args", [(0, 1, 1), (100, 0, 1), (100, 200, 1), (100, 10, 0)])
def test_bad_sizes_are_refused(args):
    with pytest.raises(ValueError):
        hpcc.input_file(*args)


def test_slowdown_is_a_time_ratio_of_medians():
    # rates: alone 10 (median of 9, 10, 11), beside 8 -> the kernel takes 10/8 = 1.25x as long
    assert hpcc.slowdown([9, 10, 11], [8, 7, 9]) == pytest.approx(0.25)
    assert hpcc.slowdown([10], [11]) == pytest.approx(10 / 11 - 1)  # faster beside: negative


def test_compare_keeps_kernels_present_in_every_run():
    alone = [{"HPL": 2.0, "PTRANS": 1.0}, {"HPL": 4.0}]
    beside = [{"HPL": 3.0, "PTRANS": 1.0}, {"HPL": 3.0}]
    out = hpcc.compare(alone, beside)
    assert list(out) == ["HPL"]
    assert out["HPL"]["alone"] == {"n": 2, "median": 3.0, "min": 2.0, "max": 4.0, "rel_range": pytest.approx(2 / 3)}
    assert out["HPL"]["slowdown"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        hpcc.compare([], beside)


def test_percentiles_interpolate():
    values = [5, 1, 4, 2, 3]
    assert [hpcc.percentile(values, q) for q in (0, 50, 100, 25, 99)] == pytest.approx([1, 3, 5, 2, 4.96])
    with pytest.raises(ValueError):
        hpcc.percentile([], 50)
    with pytest.raises(ValueError):
        hpcc.percentile([1], 101)
