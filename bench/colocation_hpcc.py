"""The HPC Challenge side of bench/bench_colocation.py: the input file it writes, the
figures it reads back from ``hpccoutf.txt``, and the statistics of alone vs co-located runs.
No cluster here (tests/unit/test_colocation_hpcc.py tests all of it).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence


class HpccOutputError(ValueError):
    """hpccoutf.txt is missing, unfinished, or a kernel's figure is absent or not valid."""


@dataclass(frozen=True)
class Kernel:
    key: str  # the summary key in hpccoutf.txt
    label: str  # for tables and plots
    unit: str
    scale: float = 1.0  # summary value x scale = value in ``unit``


# The kernels the evaluation reports: all are rates (higher is better). Latency/bandwidth of
# the ring tests need >= 2 ranks and are -1 otherwise; they are read when present.
KERNELS = (
    Kernel("HPL_Tflops", "HPL", "Gflop/s", 1000.0),
    Kernel("StarDGEMM_Gflops", "DGEMM", "Gflop/s"),
    Kernel("StarSTREAM_Triad", "STREAM Triad", "GB/s"),
    Kernel("StarRandomAccess_GUPs", "RandomAccess", "GUP/s"),
    Kernel("MPIRandomAccess_GUPs", "MPI RandomAccess", "GUP/s"),
    Kernel("StarFFT_Gflops", "FFT", "Gflop/s"),
    Kernel("MPIFFT_Gflops", "MPI FFT", "Gflop/s"),
    Kernel("PTRANS_GBs", "PTRANS", "GB/s"),
)
HPL_THRESHOLD = 16.0  # the input file's residual threshold (HPL's usual)

INPUT_TEMPLATE = """HPLinpack benchmark input file
Innovative Computing Laboratory, University of Tennessee
HPL.out      output file name (if any)
8            device out (6=stdout,7=stderr,file)
1            # of problems sizes (N)
{n}         Ns
1            # of NBs
{nb}          NBs
0            PMAP process mapping (0=Row-,1=Column-major)
1            # of process grids (P x Q)
{p}            Ps
{q}            Qs
{threshold}         threshold
1            # of panel fact
2            PFACTs (0=left, 1=Crout, 2=Right)
1            # of recursive stopping criterium
4            NBMINs (>= 1)
1            # of panels in recursion
2            NDIVs
1            # of recursive panel fact.
1            RFACTs (0=left, 1=Crout, 2=Right)
1            # of broadcast
1            BCASTs (0=1rg,1=1rM,2=2rg,3=2rM,4=Lng,5=LnM)
1            # of lookahead depth
1            DEPTHs (>=0)
2            SWAP (0=bin-exch,1=long,2=mix)
64           swapping threshold
0            L1 in (0=transposed,1=no-transposed) form
0            U  in (0=transposed,1=no-transposed) form
1            Equilibration (0=no,1=yes)
8            memory alignment in double (> 0)
##### This line (no. 32) is ignored (it serves as a separator). ######
0                      		Number of additional problem sizes for PTRANS
1200 10000 30000        	values of N
0                       	number of additional blocking sizes for PTRANS
40 9 8 13 13 20 16 32 64       	values of NB
"""


def process_grid(ranks: int) -> tuple[int, int]:
    """HPL's P x Q for ``ranks``: the most square factorisation with P <= Q."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, not {ranks}")
    p = int(math.isqrt(ranks))
    while ranks % p:
        p -= 1
    return p, ranks // p


def input_file(n: int, nb: int, ranks: int) -> str:
    """hpccinf.txt for HPL order ``n`` (it also sizes STREAM, RandomAccess, FFT and PTRANS:
    hpcc derives their arrays from HPL's memory), block ``nb``, on ``ranks`` MPI ranks."""
    if n < 1 or nb < 1 or nb > n:
        raise ValueError(f"need 1 <= nb <= n, got n={n} nb={nb}")
    p, q = process_grid(ranks)
    return INPUT_TEMPLATE.format(n=n, nb=nb, p=p, q=q, threshold=HPL_THRESHOLD)


def summary(text: str) -> dict[str, str]:
    """The key=value lines of the last summary section (hpcc appends runs to one file)."""
    start = text.rfind("Begin of Summary section.")
    end = text.find("End of Summary section.", start)
    if start < 0 or end < 0:
        raise HpccOutputError("no complete summary section (did hpcc finish?)")
    out = {}
    for line in text[start:end].splitlines()[1:]:
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip()] = value.strip()
    return out


def _number(fields: Mapping[str, str], key: str) -> float:
    try:
        return float(fields[key])
    except KeyError:
        raise HpccOutputError(f"{key} missing from the summary") from None
    except ValueError:
        raise HpccOutputError(f"{key}={fields[key]!r} is not a number") from None


def hpl_scaled_residual(fields: Mapping[str, str]) -> float:
    """HPL's check: ||Ax-b||_oo / (eps * (||A||_oo * ||x||_oo + ||b||_oo) * N)."""
    r, eps, a, x, b, n = (_number(fields, k) for k in
                          ("HPL_RnormI", "HPL_eps", "HPL_AnormI", "HPL_XnormI", "HPL_BnormI", "HPL_N"))
    return r / (eps * (a * x + b) * n)


def parse(text: str) -> dict[str, float]:
    """Kernel label -> figure in its unit, for every kernel that ran; raises HpccOutputError
    when the run failed its own checks (Success, HPL residual, RandomAccess errors)."""
    fields = summary(text)
    if fields.get("Success") != "1":
        raise HpccOutputError(f"hpcc reports Success={fields.get('Success')!r}")
    residual = hpl_scaled_residual(fields)
    if not residual < HPL_THRESHOLD:
        raise HpccOutputError(f"HPL failed its residual check: {residual:.3g} >= {HPL_THRESHOLD}")
    for key in ("MPIRandomAccess_ErrorsFraction", "PTRANS_residual"):
        if key in fields and _number(fields, key) > 0.01:
            raise HpccOutputError(f"{key}={fields[key]}: the kernel's own check failed")
    figures = {}
    for k in KERNELS:
        value = _number(fields, k.key)
        if value > 0:  # -1: not run (e.g. the ring tests on one rank)
            figures[k.label] = value * k.scale
    if "HPL" not in figures:
        raise HpccOutputError("HPL did not report a rate")
    return figures


def parse_file(path: Path) -> dict[str, float]:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise HpccOutputError(f"{path} does not exist (hpcc did not start?)") from None
    return parse(text)


# -- statistics ----------------------------------------------------------------------------

def spread(values: Sequence[float]) -> dict:
    """Median, min, max, and the relative range (max-min)/median of one sample."""
    if not values:
        raise ValueError("no values")
    med = statistics.median(values)
    return {"n": len(values), "median": med, "min": min(values), "max": max(values),
            "rel_range": (max(values) - min(values)) / med if med else float("nan")}


def slowdown(alone: Sequence[float], beside: Sequence[float]) -> float:
    """Slowdown of a rate (higher is better) as a time ratio minus one: median alone / median
    co-located - 1 (0.03 = the kernel takes 3 % longer beside functions; negative: faster)."""
    return statistics.median(alone) / statistics.median(beside) - 1.0


def compare(alone_runs: Iterable[Mapping[str, float]], beside_runs: Iterable[Mapping[str, float]]) -> dict:
    """Per kernel: the spread of each side and the slowdown, for kernels present in every run."""
    alone_runs, beside_runs = list(alone_runs), list(beside_runs)
    if not alone_runs or not beside_runs:
        raise ValueError("need at least one run on each side")
    labels = [k.label for k in KERNELS if all(k.label in r for r in alone_runs + beside_runs)]
    out = {}
    for label in labels:
        a = [r[label] for r in alone_runs]
        b = [r[label] for r in beside_runs]
        out[label] = {"alone": spread(a), "beside": spread(b), "slowdown": slowdown(a, b)}
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
