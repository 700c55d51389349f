"""faas-admin slots: the capacity batch jobs lend right now."""
from __future__ import annotations

import datetime as dt

import click

from ..common import emit_rows, friendly_errors, make_client, output_option


@click.command("slots")
@output_option
@click.pass_context
@friendly_errors
def slots_command(ctx, output):
    """List the capacity batch jobs lend (node, job, lent CPUs, memory, state; why a lend was revoked)."""
    emit_rows(output, make_client(ctx).slots(),
              f"{'NODE':<8} {'JOB':>7} {'STATE':<8} {'MEM_MB':>7} {'ENDS':<20} CPUS (OS CPUS)  REASON", _line)


def _line(r: dict) -> str:
    ends = dt.datetime.fromtimestamp(r["end_time"]).isoformat(timespec="seconds") if r["end_time"] else "-"
    return (f"{r['node']:<8} {r['job_id']:>7} {r['state']:<8} {r['mem_mb']:>7} {ends:<20} "
            f"{r['slurm_cpus']} ({sorted(set(r['os_cpus']))})"
            + (f"  {r['revoke_reason']}" if r.get("revoke_reason") else ""))
