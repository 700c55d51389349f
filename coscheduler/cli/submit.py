"""submit-function: register functions and invoke them on the spare cores of batch jobs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click

from spank_plugin.core import SpecError, parse_size_mb

from faas_runtime.states import State
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


def _function_options(f, defaults: bool):
    """The options of register (with defaults) and update (only what is given)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    opts = [
        click.option("--entrypoint", required=defaults, default=None, help="module:function (Python, e.g. mymod:handler) or path/lib.so:symbol (C, docs/functions.md)"),
        click.option("--code", "code_dir", required=defaults, default=None,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="directory holding the module, on a filesystem the compute nodes see"),
        click.option("--cores", type=click.IntRange(min=1), default=d(1), show_default=defaults),
        click.option("--mem", "mem_mb", type=SizeMB(), default=d("256M"), show_default=defaults,
                     help="memory, e.g. 512M, 2G"),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=d(60.0),
                     show_default=defaults, help="seconds; only lends lasting this long are used"),
        click.option("--max-attempts", type=click.IntRange(min=1), default=d(3), show_default=defaults,
                     help="runs allowed when evictions cut it short"),
        click.option("--image", default=None, help="container image (directory, SquashFS or SIF) to run it in"),
        click.option("--runtime", type=click.Choice(["none", "charliecloud", "apptainer", "singularity", "sarus",
                                                     "bwrap"]),
                     default=None, help="container runtime for --image (default: the agent's)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _with_register_options(f):
    return _function_options(f, defaults=True)


def _with_update_options(f):
    return _function_options(f, defaults=False)


def _check_entrypoint(entrypoint: Optional[str]) -> None:
    if entrypoint is not None and (":" not in entrypoint or entrypoint.startswith(":") or entrypoint.endswith(":")):
        raise click.BadParameter("expected module:function or path/lib.so:symbol", param_hint="--entrypoint")


def _print_function(fn: dict) -> None:
    for key in ("name", "entrypoint", "code_dir", "cores", "mem_mb", "timeout_s", "max_attempts", "image",
                "runtime", "created_at", "updated_at"):
        click.echo(f"{key + ':':<14}{fn.get(key) if fn.get(key) is not None else '-'}")
    if "invocations" in fn:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(fn["invocations"].items())) or "none"
        click.echo(f"{'invocations:':<14}{counts}")


@main.command()
@click.argument("name")
@_with_register_options
@output_option
@click.pass_context
@friendly_errors
def register(ctx, name, entrypoint, code_dir, cores, mem_mb, timeout_s, max_attempts, image, runtime, output):
    """Register function NAME (or replace its definition)."""
    _check_entrypoint(entrypoint)
    fid = make_client(ctx).register(
        name=name, entrypoint=entrypoint, code_dir=str(code_dir.resolve()), cores=cores, mem_mb=mem_mb,
        timeout_s=timeout_s, max_attempts=max_attempts, gid=os.getgid(), image=image, runtime=runtime,
    )
    if output == "json":
        emit_json({"function_id": fid, "name": name})
    else:
        click.echo(f"registered {name} (id {fid})")


@main.command()
@click.argument("name")
@_with_update_options
@output_option
@click.pass_context
@friendly_errors
def update(ctx, name, entrypoint, code_dir, cores, mem_mb, timeout_s, max_attempts, image, runtime, output):
    """Change some settings of function NAME; the others stay."""
    _check_entrypoint(entrypoint)
    changes = {k: v for k, v in dict(entrypoint=entrypoint, code_dir=str(code_dir.resolve()) if code_dir else None,
                                     cores=cores, mem_mb=mem_mb, timeout_s=timeout_s, max_attempts=max_attempts,
                                     image=image, runtime=runtime).items() if v is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    fn = make_client(ctx).update(name, **changes)
    emit_json(fn) if output == "json" else click.echo(f"updated {name}")


@main.command()
@output_option
@click.pass_context
@friendly_errors
def functions(ctx, output):
    """List your functions."""
    rows = make_client(ctx).functions()
    if output == "json":
        emit_json(rows)
        return
    click.echo(f"{'NAME':<24} {'CORES':>5} {'MEM_MB':>7} {'TIMEOUT':>8} {'TRIES':>5}  ENTRYPOINT")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['cores']:>5} {r['mem_mb']:>7} {r['timeout_s']:>8g} {r['max_attempts']:>5}  "
                   f"{r['entrypoint']}")


@main.command()
@click.argument("name")
@output_option
@click.pass_context
@friendly_errors
def show(ctx, name, output):
    """Show function NAME: its settings and its invocations by state."""
    fn = make_client(ctx).function(name)
    emit_json(fn) if output == "json" else _print_function(fn)


@main.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="also cancel its queued and running invocations")
@output_option
@click.pass_context
@friendly_errors
def delete(ctx, name, force, output):
    """Delete function NAME (the history of its invocations stays readable)."""
    reply = make_client(ctx).delete(name, force)
    if output == "json":
        emit_json({"deleted": reply["deleted"], "cancelled": reply["cancelled"]})
    else:
        click.echo(f"deleted {name}" + (f", cancelled {reply['cancelled']} invocations" if reply["cancelled"] else ""))


def _read_batch(path: Path) -> list[str]:
    """One JSON payload per non-empty line; the first malformed line stops everything."""
    payloads: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                try:
                    json.loads(text)
                except ValueError as exc:
                    raise click.ClickException(f"{path} line {n}: not JSON: {exc}") from None
                payloads.append(text)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 text: {exc}") from None
    if not payloads:
        raise click.ClickException(f"{path}: no payloads (one JSON value per line)")
    return payloads


@main.command()
@click.argument("name")
@click.option("--payload", default=None, help="the argument, as JSON [default: null]")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="FILE.jsonl: one invocation per line, each line its JSON payload")
@click.option("--priority", type=int, default=0, show_default=True, help="priority class (higher first)")
@click.option("--wait", is_flag=True, help="wait and print the return value as JSON (with --batch: the states)")
@click.option("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
@output_option
@click.pass_context
@friendly_errors
def invoke(ctx, name, payload, batch_file, priority, wait, wait_timeout, output):
    """Invoke function NAME once (or once per line of --batch); print the invocation id(s)."""
    if batch_file is not None:
        if payload is not None:
            raise click.UsageError("give --payload or --batch, not both")
        _invoke_batch(ctx, name, batch_file, priority, wait, wait_timeout, output)
        return
    payload = "null" if payload is None else payload
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


def _invoke_batch(ctx, name, path, priority, wait, wait_timeout, output) -> None:
    payloads = _read_batch(path)
    client = make_client(ctx)
    # Everything is checked before the first invocation is queued: the function, the quota
    # for the whole file, and every payload against the co-scheduler's limits.
    limits = client.check_batch(name, len(payloads), priority)
    for n, p in enumerate(payloads, 1):
        if len(p.encode()) > limits["max_payload_bytes"]:
            raise click.ClickException(f"{path}: payload {n} is {len(p.encode())} bytes; the co-scheduler "
                                       f"accepts at most {limits['max_payload_bytes']}")
    chunk = max(1, min(1000, limits["max_batch"]))
    with click.progressbar(length=len(payloads), label=f"queueing {len(payloads)} invocations of {name}",
                           file=sys.stderr) as bar:
        ids = client.invoke_batch(name, payloads, priority, chunk=chunk, progress=bar.update)
    if not wait:
        if output == "json":
            emit_json({"invocation_ids": ids})
        else:
            click.echo("\n".join(map(str, ids)))
        return
    rows = client.wait_many(ids, wait_timeout)
    states: dict[str, int] = {}
    for row in rows.values():
        states[row["state"]] = states.get(row["state"], 0) + 1
    if output == "json":
        emit_json({"invocation_ids": ids, "states": states})
    else:
        click.echo(" ".join(f"{k} {v}" for k, v in sorted(states.items())))
    if set(states) != {"SUCCEEDED"}:
        raise click.ClickException(f"{len(ids) - states.get('SUCCEEDED', 0)} of {len(ids)} invocations did not succeed")


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
@output_option
@click.pass_context
@friendly_errors
def result(ctx, invocation_id, output):
    """Print the return value of an invocation as JSON."""
    value_json = make_client(ctx).result_json(invocation_id)
    if output == "json":
        emit_json({"invocation_id": invocation_id, "result": json.loads(value_json)})
    else:
        click.echo(value_json)


@main.command()
@click.argument("invocation_ids", type=int, nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=float, default=None)
@output_option
@click.pass_context
@friendly_errors
def wait(ctx, invocation_ids, timeout_s, output):
    """Wait until invocations end; print their final states."""
    client = make_client(ctx)
    if len(invocation_ids) == 1:
        st = client.wait(invocation_ids[0], timeout_s)
        rows = {invocation_ids[0]: {"state": st["state"], "error": st.get("error")}}
    else:
        rows = client.wait_many(list(invocation_ids), timeout_s)
    if output == "json":
        emit_json([{"invocation_id": i, "state": rows[i]["state"], "error": rows[i].get("error")}
                   for i in invocation_ids])
    else:
        for i in invocation_ids:
            click.echo(rows[i]["state"] if len(invocation_ids) == 1 else f"{i} {rows[i]['state']}")


@main.command()
@click.argument("invocation_ids", type=int, nargs=-1)
@click.option("--function", "function", default=None, metavar="NAME",
              help="instead of ids: every unfinished invocation of this function of yours")
@output_option
@click.pass_context
@friendly_errors
def cancel(ctx, invocation_ids, function, output):
    """Cancel queued or running invocations (running ones are stopped on their node)."""
    if bool(invocation_ids) == bool(function):
        raise click.UsageError("give invocation ids, or --function NAME (not both)")
    client = make_client(ctx)
    if function:
        n = client.cancel_function(function)
        if output == "json":
            emit_json({"function": function, "cancelled": n})
        else:
            click.echo(f"{n} invocation(s) of {function} cancelled")
        return
    done = [{"invocation_id": i, "state": client.cancel(i)} for i in invocation_ids]
    if output == "json":
        emit_json(done)
    else:
        for row in done:
            click.echo(f"{row['invocation_id']} {row['state']}")


STATES = [st.value for st in State]


@main.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES, case_sensitive=False),
              help="only these states (repeatable)")
@click.option("--function", default=None, help="only invocations of this function")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="newest first")
@click.option("--all-users", is_flag=True, help="root only: everyone's invocations")
@output_option
@click.pass_context
@friendly_errors
def list_invocations(ctx, states, function, limit, all_users, output):
    """List your invocations, newest first."""
    rows = make_client(ctx).list(states=[s.upper() for s in states], function=function, limit=limit,
                                 all_users=all_users)
    if output == "json":
        emit_json(rows)
        return
    click.echo(f"{'ID':>8} {'FUNCTION':<20} {'STATE':<10} {'TRIES':>5} {'NODE':<8} CREATED")
    for r in rows:
        click.echo(f"{r['invocation_id']:>8} {r['function']:<20} {r['state']:<10} {r['attempts']:>5} "
                   f"{r['node'] or '-':<8} {r['created_at']}")
