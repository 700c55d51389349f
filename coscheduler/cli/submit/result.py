"""submit-function result: the return value of an invocation."""
from __future__ import annotations

import json

import click

from ..common import emit_json, friendly_errors, make_client, output_option


def print_result(invocation_id: int, value_json: str, output: str) -> None:
    """The value as its JSON text, or with ``--output json`` inside {invocation_id, result}."""
    if output == "json":
        emit_json({"invocation_id": invocation_id, "result": json.loads(value_json)})
    else:
        click.echo(value_json)


@click.command("result")
@click.argument("invocation_id", type=int)
@output_option
@click.pass_context
@friendly_errors
def result_command(ctx, invocation_id, output):
    """Print the return value of an invocation as JSON."""
    print_result(invocation_id, make_client(ctx).result_json(invocation_id), output)
