"""submit-function wait: block until invocations end."""
from __future__ import annotations

import click

from ..common import emit_json, friendly_errors, make_client, output_option


@click.command("wait")
@click.argument("invocation_ids", type=int, nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=float, default=None)
@output_option
@click.pass_context
@friendly_errors
def wait_command(ctx, invocation_ids, timeout_s, output):
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
