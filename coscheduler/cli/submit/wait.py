"""submit-function wait: block until invocations end, showing how far they got."""
from __future__ import annotations

import sys
from typing import Optional

import click

from faas_runtime.queue_client import Client

from ..common import CommandFailed, emit_json, friendly_errors, make_client, output_option
from .result import failure_summary


def wait_one(client: Client, invocation_id: int, timeout_s: Optional[float]) -> dict:
    """Wait for one invocation, saying on stderr each state it reaches (and why it is queued)."""
    def said(st: dict) -> None:
        reason = f": {st['reason']}" if st.get("reason") else ""
        click.echo(f"invocation {invocation_id} {st['state']}{reason}", err=True)

    return client.wait(invocation_id, timeout_s, on_change=said)


def wait_all(client: Client, ids: list[int], timeout_s: Optional[float], subscribed: bool = False,
             read_succeeded: bool = True) -> dict[int, dict]:
    """Wait for many, with a progress bar of how many ended (stderr); ``subscribed`` and
    ``read_succeeded``: see ``Client.wait_many``."""
    with click.progressbar(length=len(ids), label=f"waiting for {len(ids)} invocations", file=sys.stderr) as bar:
        return client.wait_many(ids, timeout_s, progress=bar.update, subscribed=subscribed,
                                read_succeeded=read_succeeded)


@click.command("wait")
@click.argument("invocation_ids", type=int, nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=float, default=None)
@output_option
@click.pass_context
@friendly_errors
def wait_command(ctx, invocation_ids, timeout_s, output):
    """Wait until invocations end; print their final states (exit 1 if any did not succeed)."""
    client = make_client(ctx)
    if len(invocation_ids) == 1:
        st = wait_one(client, invocation_ids[0], timeout_s)
        rows = {invocation_ids[0]: {"invocation_id": invocation_ids[0], "state": st["state"],
                                    "error": st.get("error")}}
    else:
        rows = wait_all(client, list(invocation_ids), timeout_s)
    if output == "json":
        emit_json([{"invocation_id": i, "state": rows[i]["state"], "error": rows[i].get("error")}
                   for i in invocation_ids])
    else:
        for i in invocation_ids:
            click.echo(rows[i]["state"] if len(invocation_ids) == 1 else f"{i} {rows[i]['state']}")
    summary = failure_summary([rows[i] for i in invocation_ids])
    if summary:
        raise CommandFailed(summary)
