"""submit-function list: your invocations, newest first."""
from __future__ import annotations

import click

from faas_runtime.states import State

from ..common import emit_rows, friendly_errors, make_client, output_option

STATES = [st.value for st in State]


@click.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES, case_sensitive=False),
              help="only these states (repeatable)")
@click.option("--function", default=None, help="only invocations of this function")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="newest first")
@click.option("--all-users", is_flag=True, help="root only: everyone's invocations")
@output_option
@click.pass_context
@friendly_errors
def list_command(ctx, states, function, limit, all_users, output):
    """List your invocations, newest first (a queued one with the reason it waits)."""
    rows = make_client(ctx).list(states=[s.upper() for s in states], function=function, limit=limit,
                                 all_users=all_users)
    emit_rows(output, rows, f"{'ID':>8} {'FUNCTION':<20} {'STATE':<10} {'TRIES':>5} {'NODE':<8} CREATED",
              lambda r: f"{r['invocation_id']:>8} {r['function']:<20} {r['state']:<10} {r['attempts']:>5} "
                        f"{r['node'] or '-':<8} {r['created_at']}" + (f"  ({r['reason']})" if r.get("reason") else ""))
