"""``faas-admin analyze``: idle capacity of a cluster from its job trace, and what slurm-faas
would recover. Definitions: docs/analyze.md."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import click

from ...tools.analysis import report
from ...tools.analysis.records import JobRecord, open_text
from ...tools.analysis.sacct import JobcompReader, SacctReader
from ...tools.analysis.simulate import PRESETS, FunctionMix, SimConfig, simulate
from ...tools.analysis.stats import Analysis
from ...tools.analysis.swf import SWFReader

SACCT_FIELDS = ("JobID,Submit,Start,End,ElapsedRaw,NNodes,NCPUS,TotalCPU,ReqMem,ReqTRES,"
                "MaxRSS,NTasks,State,TimelimitRaw")
READERS = {"swf": SWFReader, "sacct": SacctReader, "jobcomp": JobcompReader}
# How far out of submit order a source may be (s): SWF is sorted by submit time by definition.
SLACK = {"swf": 0.0, "sacct": 86400.0, "jobcomp": 86400.0}


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".swf", ".swf.gz")):
        return "swf"
    with open_text(path) as fh:
        for line in fh:
            s = line.strip()
            if not s:
                continue
            if s.startswith(";") or s.split()[0].lstrip("-").isdigit() and "|" not in s:
                return "swf"
            if "|" in s and "jobid" in s.lower():
                return "sacct"
            if s.startswith("JobId="):
                return "jobcomp"
            break
    raise click.ClickException(
        f"cannot tell the format of {path}: pass --format swf|sacct|jobcomp "
        "(SWF lines start with ';' or a job number, sacct -P output with a JobID|... header, "
        "jobcomp lines with JobId=)")


def _run_sacct(since: str, dest: Path) -> None:
    exe = shutil.which("sacct")
    if exe is None:
        raise click.ClickException("--sacct: no sacct on PATH; run it elsewhere and pass the file: "
                                   f"sacct -a -P -S {since} -o {SACCT_FIELDS} > jobs.txt")
    with dest.open("w") as out:  # spooled to disk: memory stays flat, and it can be read twice
        proc = subprocess.run([exe, "-a", "-P", "-S", since, "-o", SACCT_FIELDS],
                              stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"sacct failed ({proc.returncode}): {proc.stderr.strip()}")


@click.command("analyze")
@click.argument("input_path", metavar="INPUT", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sacct", "use_sacct", is_flag=True, help="Run sacct instead of reading INPUT.")
@click.option("--since", default="now-30days", show_default=True, help="With --sacct: sacct -S.")
@click.option("--format", "fmt", type=click.Choice(["auto", "swf", "sacct", "jobcomp"]),
              default="auto", show_default=True, help="Input format.")
@click.option("--capacity", type=click.IntRange(min=1), default=None,
              help="Processors in the cluster (idle periods); SWF: header MaxProcs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of text.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG plots into this directory.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one self-contained HTML report.")
@click.option("--simulate", "do_simulate", is_flag=True,
              help="Replay the trace and backfill functions into idle cores.")
@click.option("--mix", default="mixed", show_default=True,
              help=f"Function mix: a preset ({', '.join(PRESETS)}) or a JSON file.")
@click.option("--opt-in", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Fraction of jobs that opt in to lending.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of opt-in, sampling, mix.")
@click.option("--budget", type=click.IntRange(min=100), default=50_000, show_default=True,
              help="Functions to simulate per scenario (jobs are sampled to fit; totals scaled).")
@click.option("--assume-cpu-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="CPU used share for jobs without CPU time (e.g. KTH, jobcomp) in --simulate.")
def analyze_command(input_path: Optional[Path], use_sacct: bool, since: str, fmt: str,
                    capacity: Optional[int], as_json: bool, plots_dir: Optional[Path],
                    html_file: Optional[Path], do_simulate: bool, mix: str, opt_in: float, seed: int,
                    budget: int, assume_cpu_share: Optional[float]) -> None:
    """Analyse a job trace: how much of its allocations a cluster leaves idle, and (with
    --simulate) how much slurm-faas would recover by lending it to functions.

    INPUT is an SWF trace (.swf or .swf.gz, Parallel Workloads Archive), sacct --parsable2
    output, or a jobcomp/filetxt log. Malformed lines are counted and reported.
    """
    if use_sacct == (input_path is not None):
        raise click.ClickException("give either INPUT or --sacct (exactly one)")
    try:
        fn_mix = FunctionMix.load(mix)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="faas-analyze-") as tmp:
        if use_sacct:
            input_path = Path(tmp) / "sacct.txt"
            _run_sacct(since, input_path)
            fmt = "sacct"
        assert input_path is not None
        if fmt == "auto":
            fmt = detect_format(input_path)
        result, analysis = _run(input_path, fmt, capacity, do_simulate, SimConfig(
            mix=fn_mix, opt_in=opt_in, seed=seed, budget=budget,
            assumed_cpu_share=assume_cpu_share, slack=SLACK[fmt]))
    result["source"] = "sacct" if use_sacct else str(input_path)
    if as_json:
        click.echo(report.to_json(result))
    else:
        click.echo(report.text_summary(result), nl=False)
    try:
        if plots_dir is not None:
            for p in report.write_plots(result, analysis, plots_dir):
                click.echo(f"wrote {p}", err=True)
        if html_file is not None:
            report.write_html(result, analysis, html_file)
            click.echo(f"wrote {html_file}", err=True)
    except ImportError as exc:
        raise click.ClickException(f"plots need matplotlib ({exc}); pip install 'slurm-faas[analyze]'")
    except OSError as exc:
        raise click.ClickException(f"cannot write output: {exc}") from exc


def _run(path: Path, fmt: str, capacity: Optional[int], do_simulate: bool,
         cfg: SimConfig) -> tuple[dict, Analysis]:
    reader = READERS[fmt](path)
    jobs = iter(reader)
    try:
        first: Optional[JobRecord] = next(jobs, None)  # reads the SWF header first
        cap = capacity or reader.max_procs
        analysis = Analysis(capacity=cap, slack=SLACK[fmt])
        if first is not None:
            analysis.add(first)
        for job in jobs:
            analysis.add(job)
    except (OSError, EOFError, UnicodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    analysis.finish()
    if analysis.records == 0:
        raise click.ClickException(
            f"no jobs read from {path} as {fmt} ({reader.issues.count} malformed lines"
            + (f", e.g. line {reader.issues.examples[0][0]}: {reader.issues.examples[0][1]}"
               if reader.issues.examples else "") + ")")
    time_origin = reader.unix_start_time if isinstance(reader, SWFReader) else 0.0
    result: dict = {
        "source": str(path),
        "source_name": path.name,
        "format": fmt,
        "time_origin": time_origin,
        "header": {k: reader.header[k] for k in ("Computer", "Installation", "Acknowledge",
                                                  "MaxProcs", "UnixStartTime")
                   if k in reader.header},
        "parse": {"lines": reader.lines, "jobs": reader.jobs, "malformed": reader.issues.to_dict()},
        "analysis": analysis.to_dict(),
    }
    if do_simulate:
        factory: Callable[[], Iterable[JobRecord]] = lambda: iter(READERS[fmt](path))
        result["simulation"] = simulate(factory, cfg)
    return result, analysis
