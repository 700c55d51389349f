"""submit-function: register functions and invoke them on the spare cores of batch jobs."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import click

from spank_plugin.core import SpecError, parse_size_mb

from .common import coscheduler_options, emit_json, friendly_errors, make_client, output_option


class SizeMB(click.ParamType):
    """A memory size like 512M or 4G, parsed by the same C parser as --faas-share."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size_mb(value)
        except SpecError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
@coscheduler_options
@click.pass_context
def main(ctx: click.Context, endpoint: str, munge_socket: Optional[str]) -> None:
    """Run Python functions on cores and memory that Slurm batch jobs lend out."""
    ctx.obj = {"endpoint": endpoint, "munge_socket": munge_socket}


@main.command()
@click.argument("name")
@click.option("--entrypoint", required=True, help="module:function, e.g. mymod:handler")
@click.option("--code", "code_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="directory holding the module, on a filesystem the compute nodes see")
@click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--mem", "mem_mb", type=SizeMB(), default="256M", show_default=True, help="memory, e.g. 512M, 2G")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="seconds; only lends lasting this long are used")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="runs allowed when evictions cut it short")
@output_option
@click.pass_context
@friendly_errors
def register(ctx, name, entrypoint, code_dir, cores, mem_mb, timeout_s, max_attempts, output):
    """Register (or update) function NAME."""
    if ":" not in entrypoint:
        raise click.BadParameter("expected module:function", param_hint="--entrypoint")
    fid = make_client(ctx).register(
        name=name, entrypoint=entrypoint, code_dir=str(code_dir.resolve()), cores=cores, mem_mb=mem_mb,
        timeout_s=timeout_s, max_attempts=max_attempts, gid=os.getgid(),
    )
    if output == "json":
        emit_json({"function_id": fid, "name": name})
    else:
        click.echo(f"registered {name} (id {fid})")


@main.command()
@click.argument("name")
@click.option("--payload", default="null", show_default=True, help="the argument, as JSON")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--wait", is_flag=True, help="wait and print the return value as JSON")
@click.option("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
@output_option
@click.pass_context
@friendly_errors
def invoke(ctx, name, payload, priority, wait, wait_timeout, output):
    """Invoke function NAME once; print the invocation id (or, with --wait, the result)."""
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    client = make_client(ctx)
    inv_id = client.invoke(name, payload, priority)
    if not wait:
        emit_json({"invocation_id": inv_id}) if output == "json" else click.echo(inv_id)
        return
    final = client.wait(inv_id, wait_timeout)
    if final["state"] != "SUCCEEDED":
        raise click.ClickException(f"invocation {inv_id} ended {final['state']}: {final.get('error')}")
    value_json = client.result_json(inv_id)
    if output == "json":
        emit_json({"invocation_id": inv_id, "result": json.loads(value_json)})
    else:
        click.echo(value_json)


@main.command()
@click.argument("invocation_id", type=int)
@click.option("--history", is_flag=True, help="also show every state change with its time")
@output_option
@click.pass_context
@friendly_errors
def status(ctx, invocation_id, history, output):
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


@main.command()
@click.argument("invocation_id", type=int)
@click.pass_context
@friendly_errors
def result(ctx, invocation_id):
    """Print the return value of an invocation as JSON."""
    click.echo(make_client(ctx).result_json(invocation_id))


@main.command()
@click.argument("invocation_id", type=int)
@click.option("--timeout", "timeout_s", type=float, default=None)
@output_option
@click.pass_context
@friendly_errors
def wait(ctx, invocation_id, timeout_s, output):
    """Wait until an invocation ends; print its final state."""
    st = make_client(ctx).wait(invocation_id, timeout_s)
    if output == "json":
        emit_json({"invocation_id": invocation_id, "state": st["state"], "error": st.get("error")})
    else:
        click.echo(st["state"])
