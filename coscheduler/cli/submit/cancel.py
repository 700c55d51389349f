"""submit-function cancel: stop queued or running invocations."""
from __future__ import annotations

import click

from ..common import emit, emit_json, friendly_errors, make_client, output_option


@click.command("cancel")
@click.argument("invocation_ids", type=int, nargs=-1)
@click.option("--function", "function", default=None, metavar="NAME",
              help="instead of ids: every unfinished invocation of this function of yours")
@output_option
@click.pass_context
@friendly_errors
def cancel_command(ctx, invocation_ids, function, output):
    """Cancel queued or running invocations (running ones are stopped on their node)."""
    if bool(invocation_ids) == bool(function):
        raise click.UsageError("give invocation ids, or --function NAME (not both)")
    client = make_client(ctx)
    if function:
        n = client.cancel_function(function)
        emit(output, {"function": function, "cancelled": n}, f"{n} invocation(s) of {function} cancelled")
        return
    done = [{"invocation_id": i, "state": client.cancel(i)} for i in invocation_ids]
    if output == "json":
        emit_json(done)
    else:
        for row in done:
            click.echo(f"{row['invocation_id']} {row['state']}")
