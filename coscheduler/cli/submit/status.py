"""submit-function status: the state of one invocation, and its history."""
from __future__ import annotations

import click

from ..common import emit_json, friendly_errors, make_client, output_option


@click.command("status")
@click.argument("invocation_id", type=int)
@click.option("--history", is_flag=True, help="also show every state change with its time")
@output_option
@click.pass_context
@friendly_errors
def status_command(ctx, invocation_id, history, output):
    """Show the state of an invocation (QUEUED, RUNNING, SUCCEEDED, ...)."""
    st = make_client(ctx).status(invocation_id)
    if output == "json":
        emit_json({k: v for k, v in st.items() if k not in ("v", "type", "rid")})
        return
    click.echo(st["state"])
    if st.get("node"):
        click.echo(f"  on {st['node']} in job {st['job_id']}, cores {st['slurm_cpus']} (OS CPUs {st['os_cpus']})")
    if st.get("error"):
        click.echo(f"  error: {st['error']}")
    if history:
        for state, at, reason in st["history"]:
            click.echo(f"  {at}  {state}" + (f"  ({reason})" if reason else ""))
