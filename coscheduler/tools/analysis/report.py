"""Render an analysis: text summary, JSON, PNG plots (matplotlib Agg), one self-contained HTML.

``result`` is the dict built by ``cli.analyze``: ``{"source", "format", "parse", "analysis",
"simulation"?}`` with ``analysis`` from ``stats.Analysis.to_dict`` and ``simulation`` from
``simulate.simulate``. Plots need the live ``Analysis`` (for the CDFs) and are optional:
matplotlib is imported only when plots are asked for.
"""
from __future__ import annotations

import base64
import html
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .stats import Analysis


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _dur(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    for unit, s in (("d", 86400), ("h", 3600), ("min", 60)):
        if x >= s:
            return f"{x / s:.1f} {unit}"
    return f"{x:.0f} s"


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=False, default=str)


def text_summary(result: dict) -> str:
    a = result["analysis"]
    p = result["parse"]
    lines = [
        f"source: {result['source']} ({result['format']})",
        f"lines read: {p['lines']}, jobs: {a['jobs']}, malformed lines: {p['malformed']['count']}"
        + (f" {p['malformed']['by_reason']}" if p["malformed"]["count"] else ""),
    ]
    if a["missing"]:
        lines.append("jobs missing a field (left out of the figures needing it): "
                     + ", ".join(f"{k}: {v}" for k, v in a["missing"].items()))
    c, m = a["cpu"], a["memory"]
    lines += [
        "",
        f"CPU used share of allocated core-seconds ({c['jobs']} jobs, {c['clipped_above_1']} clipped at 1):",
        f"  per job {_pct(c['used_share_per_job'])}, by core-seconds "
        f"{_pct(c['used_share_by_core_seconds'])} (unclipped {_pct(c['used_share_raw'])})",
        f"  jobs with >= 1 idle core: {c['jobs_with_idle_cores']}, "
        f"idle core-seconds: {c['spare_core_seconds']:.4g}",
        f"memory used share of requested ({m['jobs']} jobs, {m['clipped_above_1']} clipped at 1):",
        f"  per job {_pct(m['used_share_per_job'])}, by core-seconds "
        f"{_pct(m['used_share_by_core_seconds'])}, by KB-seconds {_pct(m['used_share_raw'])}",
    ]
    d = a["durations"]["per_job"]
    if d["n"]:
        lines.append(f"job run time: median {_dur(d['p50'])}, p90 {_dur(d['p90'])}, "
                     f"mean {_dur(d['mean'])}; under 10 min: {_pct(d['share_below']['10min'])}")
    w = a["runtime_vs_requested"]
    if w["n"]:
        lines.append(f"run time / requested time ({w['n']} jobs): median {w['p50']:.2f}, "
                     f"p90 {w['p90']:.2f}; under half: {_pct(w['share_below']['0.5'])}, "
                     f"over 1: {_pct(1 - w['share_below']['1'])}")
    ip = a.get("idle_periods")
    if ip:
        pp, bt = ip["per_period"], ip["by_idle_proc_seconds"]
        lines += [
            "",
            f"idle periods on {ip['capacity']} processors (cluster idle share "
            f"{_pct(ip['cluster_idle_share'])}; {pp['n']} periods, {ip['censored_periods']} censored):",
        ]
        if pp["n"]:
            lines += [
                f"  median {_dur(pp['p50'])}, p90 {_dur(pp['p90'])}; "
                f"under 1 min {_pct(pp['share_below']['1min'])}, under 10 min "
                f"{_pct(pp['share_below']['10min'])}, under 1 h {_pct(pp['share_below']['1h'])}",
                f"  share of idle processor-seconds in periods under 10 min: "
                f"{_pct(bt['share_below']['10min'])}",
            ]
        if ip["overcommit_s"]:
            lines.append(f"  note: jobs held more than {ip['capacity']} processors for "
                         f"{_dur(ip['overcommit_s'])} (max {ip['max_allocated']}; time-shared "
                         f"or other partitions); free counted as 0 then")
    else:
        lines += ["", "idle periods: not computed (cluster size unknown; pass --capacity)"]
    sim = result.get("simulation")
    if sim:
        lines += [
            "",
            f"simulation: mix {sim['mix']['name']}, opt-in {sim['opt_in']:.2f}, seed {sim['seed']}; "
            f"{sim['sampled_jobs']} of {sim['opted_in_jobs']} lending jobs replayed "
            f"(rate {sim['sample_rate']:.3g}, totals x{sim['scale']:.4g})",
            f"  lendable idle core-seconds: {sim['spare_core_seconds']:.4g}",
        ]
        if not sim["opted_in_jobs"]:
            lines.append("  nothing to lend: no opted-in job with CPU time and >= 1 idle core "
                         "(a trace without CPU time needs --assume-cpu-share)")
        for key, s in sim["scenarios"].items():
            e = s["estimated_total"]
            lines.append(
                f"  {key.replace('_', '-')}: recovered {_pct(s['recovered_share_of_spare'])} of idle "
                f"core-seconds = {e['recovered_core_seconds']:.4g} core-s, "
                f"{e['recovered_gb_seconds']:.4g} GB-s; completions {e['completions']:.4g}, "
                f"evictions {e['evictions']:.4g} ({_pct(s['eviction_share'])} of placements), "
                f"lost {e['lost_core_seconds']:.4g} core-s")
    return "\n".join(lines) + "\n"


def headline(result: dict) -> list[tuple[str, str]]:
    """The few figures a sysadmin puts on a slide, as (what, value) rows."""
    a = result["analysis"]
    rows = [("jobs analysed", f"{a['jobs']:,}"),
            ("CPU used, share of allocated core-seconds", _pct(a["cpu"]["used_share_by_core_seconds"])),
            ("memory used, share of requested", _pct(a["memory"]["used_share_by_core_seconds"])),
            ("idle core-hours inside jobs", f"{a['cpu']['spare_core_seconds'] / 3600:,.0f}")]
    ip = a.get("idle_periods")
    if ip:
        rows.append((f"cluster idle share ({ip['capacity']} processors)", _pct(ip["cluster_idle_share"])))
    sim = result.get("simulation")
    if sim and "walltime_aware" in sim["scenarios"]:
        s = sim["scenarios"]["walltime_aware"]
        scaled = " (scaled estimate)" if sim["scale"] > 1 else ""
        rows += [(f"idle core-seconds recovered by functions ({sim['mix']['name']} mix)",
                  _pct(s["recovered_share_of_spare"])),
                 (f"core-hours recovered{scaled}", f"{s['estimated_total']['recovered_core_seconds'] / 3600:,.0f}"),
                 ("placements evicted", _pct(s["eviction_share"]))]
    return rows


def headline_html(result: dict) -> str:
    cells = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline(result))
    return f'<table class="headline">\n{cells}\n</table>'


def write_plots(result: dict, analysis: Analysis, outdir: Path) -> list[Path]:
    """Write the PNGs a sysadmin puts on a slide; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    title = result["source_name"]
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = outdir / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    def step(ax, hist, label, **kw) -> None:
        pts = hist.cdf()
        if pts:
            ax.step([x for x, _ in pts], [y for _, y in pts], where="post", label=label, **kw)

    @contextmanager
    def cdf(name: str, what: str, xlabel: str) -> Iterator:
        """One CDF figure; the body draws its curves and what is its own on the axes."""
        fig, ax = plt.subplots(figsize=(6, 4))
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CDF")
        ax.set_title(f"{title}: {what}")
        ax.grid(alpha=0.3)
        save(fig, name)

    if analysis.cpu_job.total > 0 or analysis.mem_job.total > 0:
        with cdf("utilisation_cdf.png", "utilisation", "used share of allocation") as ax:
            step(ax, analysis.cpu_job, "CPU, per job")
            step(ax, analysis.cpu_w, "CPU, by core-seconds")
            step(ax, analysis.mem_job, "memory, per job", linestyle="--")
            step(ax, analysis.mem_w, "memory, by core-seconds", linestyle="--")
            ax.set_xlim(0, 1)
            ax.legend(loc="upper left", fontsize=8)

    if analysis.durations.total > 0:
        with cdf("durations_cdf.png", "job durations", "job run time (s)") as ax:
            step(ax, analysis.durations, "per job")
            step(ax, analysis.durations_w, "by core-seconds")
            ax.set_xscale("log")
            ax.legend(fontsize=8)

    if analysis.walltime.total > 0:
        with cdf("runtime_vs_requested_cdf.png", "run time vs requested", "run time / requested time") as ax:
            step(ax, analysis.walltime, "per job")
            ax.set_xscale("log")
            ax.set_xlim(1e-3, 1e2)
            ax.axvline(1.0, color="grey", linestyle=":")

    idle = analysis.idle
    if idle is not None and idle.periods.total > 0:
        with cdf("idle_periods_cdf.png", "idle periods", "idle period length (s)") as ax:
            step(ax, idle.periods, "per idle period")
            step(ax, idle.periods_by_time, "by idle processor-seconds")
            ax.axvline(600, color="grey", linestyle=":", label="10 min")
            ax.set_xscale("log")
            ax.legend(fontsize=8)

    sim = result.get("simulation")
    if sim and any(s["series"] for s in sim["scenarios"].values()):
        import datetime as dt

        t0 = result.get("time_origin", 0.0)
        days = sim["bin_s"] / 86400.0
        # A sample scaled up can claim more cores than the machine has: cap at its size.
        capacity = (result["analysis"].get("idle_periods") or {}).get("capacity")
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, s in sim["scenarios"].items():
            if not s["series"]:
                continue
            xs = [dt.datetime.fromtimestamp(t0 + t, dt.timezone.utc) for t, _ in s["series"]]
            ys = [v / sim["bin_s"] for _, v in s["series"]]  # mean cores recovered in the bin
            if capacity:
                ys = [min(y, capacity) for y in ys]
            ax.plot(xs, ys, drawstyle="steps-post", label=key.replace("_", "-"), linewidth=0.8)
        if capacity:
            ax.axhline(capacity, color="grey", linestyle=":", label=f"machine: {capacity} processors")
        ax.set_ylabel(f"cores recovered (mean over {days:g} d)")
        ax.set_title(f"{title}: recovered capacity ({sim['mix']['name']} mix)")
        if sim["scale"] > 1:
            ax.text(0.01, 0.98, f"scaled estimate: a {sim['sample_rate']:.3g} sample x{sim['scale']:.3g}"
                    + (f", capped at {capacity} processors" if capacity else ""), transform=ax.transAxes,
                    va="top", fontsize=7, color="dimgrey")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        save(fig, "recovered_over_time.png")
    return written


def write_html(result: dict, analysis: Analysis, path: Path) -> None:
    """One file, no external references: the summary and the plots as base64 PNGs."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pngs = write_plots(result, analysis, Path(tmp))
        imgs = [
            (p.stem.replace("_", " "), base64.b64encode(p.read_bytes()).decode("ascii"))
            for p in pngs
        ]
    body = "\n".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(n)}</figcaption></figure>"
        for n, b in imgs
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>slurm-faas analysis: {html.escape(result['source_name'])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table.headline {{ border-collapse: collapse; font-size: 1.1em; margin: 1em 0; }}
table.headline th, table.headline td {{ border-bottom: 1px solid #ddd; padding: 0.4em 1em; text-align: left; }}
table.headline td {{ font-weight: bold; }}
pre {{ background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 520px; }}
</style></head><body>
<h1>slurm-faas: idle capacity of {html.escape(result['source_name'])}</h1>
{headline_html(result)}
<h2>Details</h2>
<pre>{html.escape(text_summary(result))}</pre>
<h2>Figures</h2>
{body}
<p>Definitions: see docs/analyze.md of slurm-faas. Parallel Workloads Archive logs: cite
Feitelson, Tsafrir, Krakov, JPDC 74(10), 2014, and acknowledge the log's contributor.</p>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
