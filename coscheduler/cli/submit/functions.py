"""submit-function functions / show / delete: the functions you registered."""
from __future__ import annotations

import click

from ..common import emit, emit_json, emit_rows, friendly_errors, make_client, output_option


@click.command("functions")
@output_option
@click.pass_context
@friendly_errors
def functions_command(ctx, output):
    """List your functions."""
    emit_rows(output, make_client(ctx).functions(),
              f"{'NAME':<24} {'CORES':>5} {'MEM_MB':>7} {'TIMEOUT':>8} {'TRIES':>5}  ENTRYPOINT",
              lambda r: f"{r['name']:<24} {r['cores']:>5} {r['mem_mb']:>7} {r['timeout_s']:>8g} "
                        f"{r['max_attempts']:>5}  {r['entrypoint']}")


def _print_function(fn: dict) -> None:
    for key in ("name", "entrypoint", "code_dir", "cores", "mem_mb", "timeout_s", "max_attempts", "image",
                "runtime", "created_at", "updated_at"):
        click.echo(f"{key + ':':<14}{fn.get(key) if fn.get(key) is not None else '-'}")
    if "invocations" in fn:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(fn["invocations"].items())) or "none"
        click.echo(f"{'invocations:':<14}{counts}")


@click.command("show")
@click.argument("name")
@output_option
@click.pass_context
@friendly_errors
def show_command(ctx, name, output):
    """Show function NAME: its settings and its invocations by state."""
    fn = make_client(ctx).function(name)
    emit_json(fn) if output == "json" else _print_function(fn)


@click.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="also cancel its queued and running invocations")
@output_option
@click.pass_context
@friendly_errors
def delete_command(ctx, name, force, output):
    """Delete function NAME (the history of its invocations stays readable)."""
    reply = make_client(ctx).delete(name, force)
    emit(output, {"deleted": reply["deleted"], "cancelled": reply["cancelled"]},
         f"deleted {name}" + (f", cancelled {reply['cancelled']} invocations" if reply["cancelled"] else ""))
