"""submit-function status / output: the state of one invocation, its history, its output."""
from __future__ import annotations

import click

from ..common import emit, emit_json, friendly_errors, make_client, output_option


@click.command("status")
@click.argument("invocation_id", type=int)
@click.option("--history", is_flag=True, help="also show every state change with its time")
@output_option
@click.pass_context
@friendly_errors
def status_command(ctx, invocation_id, history, output):
    """Show the state of an invocation (QUEUED with the reason it waits, RUNNING,
    SUCCEEDED, FAILED with the function's traceback, ...)."""
    st = make_client(ctx).status(invocation_id)
    if output == "json":
        emit_json({k: v for k, v in st.items() if k not in ("v", "type", "rid")})
        return
    click.echo(st["state"])
    if st.get("reason"):
        click.echo(f"  reason: {st['reason']}")
    if st.get("node"):
        click.echo(f"  on {st['node']} in job {st['job_id']}, cores {st['slurm_cpus']} (OS CPUs {st['os_cpus']})")
    if st.get("error"):
        click.echo(f"  error: {st['error']}")
    if st.get("traceback"):
        click.echo("  " + st["traceback"].rstrip().replace("\n", "\n  "))
    if st.get("output_bytes"):
        click.echo(f"  output: {st['output_bytes']} bytes (submit-function output {invocation_id})")
    if history:
        for state, at, reason in st["history"]:
            click.echo(f"  {at}  {state}" + (f"  ({reason})" if reason else ""))


@click.command("output")
@click.argument("invocation_id", type=int)
@output_option
@click.pass_context
@friendly_errors
def output_command(ctx, invocation_id, output):
    """Print what a finished invocation wrote to stdout and stderr (the last 64 KiB)."""
    text = make_client(ctx).output(invocation_id)
    emit(output, {"invocation_id": invocation_id, "output": text}, text.rstrip("\n"))
