"""faas-admin status: the service on one screen (or -o json)."""
from __future__ import annotations

import click

from ..common import emit, friendly_errors, make_client, output_option


@click.command("status")
@output_option
@click.pass_context
@friendly_errors
def status_command(ctx, output):
    """The co-scheduler's health, every agent, the queue by state and user, throughput over
    the last minute, and the capacity recovered (core-seconds lent and used). Root only."""
    ov = make_client(ctx).overview()
    doc = {k: v for k, v in ov.items() if k not in ("v", "type", "rid", "metrics")}
    emit(output, doc, _screen(doc))


def _screen(ov: dict) -> str:
    h, q, cap = ov["health"], ov["queue"], ov["capacity"]
    ha = h.get("ha")
    lines = [f"co-scheduler up {h['uptime_s']:.0f} s; loop step p99 (ms): "
             + ", ".join(f"{k.removeprefix('step_')} {v}" for k, v in sorted(h["steps_p99_ms"].items())),
             *([f"high availability: the active one is {ha['active']} since {ha['since']} (epoch {ha['epoch']})"]
               if ha else []),
             "",
             f"{'NODE':<12} {'AGENT':<9} {'HEARD':>7} {'LENDS':>5} {'LENT':>5} {'USED':>5} {'MEM_MB':>8} {'WARM':>4}"]
    for node, a in ov["agents"].items():
        heard = f"{a['last_heartbeat_s']:.1f}s" if a["last_heartbeat_s"] is not None else "-"
        lines.append(f"{node:<12} {'up' if a['connected'] else 'MISSING':<9} {heard:>7} {a['lends']:>5} "
                     f"{a['cores_lent']:>5} {a['cores_used']:>5} {a['mem_lent_mb']:>8} {a['warm']:>4}")
    lines += ["", "queue: " + (", ".join(f"{s} {n}" for s, n in sorted(q["by_state"].items())) or "empty")]
    for uid, counts in sorted(q["by_user"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"  uid {uid}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    lines += ["", f"throughput: {ov['throughput_per_s_last_minute']} invocations/s over the last minute",
              f"capacity: {cap['cores_lent_now']} cores lent now, {cap['cores_used_now']} used by functions, "
              f"{cap['mem_lent_mb_now']} MiB lent",
              f"recovered: {cap['lent_core_seconds']:.0f} core-seconds lent (all time), "
              f"{cap['used_core_seconds_since_start']:.0f} used by functions (since the co-scheduler started)"]
    return "\n".join(lines)
