"""submit-function result: return values, of one invocation or many (ids, ranges, a function's)."""
from __future__ import annotations

from typing import Optional

import click

from ..common import CommandFailed, emit_json, emit_line, fail, friendly_errors, make_client, output_option, \
    strict_json

MAX_RANGE = 100_000  # ids one range may name (a request's bound)
NAMED_FAILURES = 10  # failures a summary names; the rest are counted


def print_result(invocation_id: int, value_json: str, output: str) -> None:
    """The value as its JSON text, or with ``--output json`` inside {invocation_id, result}."""
    value = strict_json(value_json)
    if output == "json":
        emit_json({"invocation_id": invocation_id, "result": value})
    else:
        click.echo(value_json)


def result_doc(row: dict) -> dict:
    """A row of ``Client.results`` as users read it: the value parsed, or the error."""
    doc = {"invocation_id": row["invocation_id"], "state": row["state"]}
    if "value_json" in row:
        doc["result"] = strict_json(row["value_json"])
    elif row.get("error"):
        doc["error"] = row["error"]
        if row.get("traceback"):
            doc["traceback"] = row["traceback"]
    return doc


def failure_summary(rows: list[dict]) -> Optional[str]:
    """'1 of 3 invocations did not succeed: 12 FAILED (KeyError: 'x')', or None."""
    bad = [r for r in rows if r.get("state") != "SUCCEEDED"]
    if not bad:
        return None
    named = "; ".join(f"{r['invocation_id']} {r.get('state') or 'unknown'}"
                      + (f" ({_first_line(r['error'])})" if r.get("error") else "") for r in bad[:NAMED_FAILURES])
    more = f"; and {len(bad) - NAMED_FAILURES} more" if len(bad) > NAMED_FAILURES else ""
    return f"{len(bad)} of {len(rows)} invocations did not succeed: {named}{more}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 200 else line[:197] + "..."


def parse_ids(specs: tuple[str, ...]) -> list[int]:
    """IDs and inclusive ranges (``100-120``), in the order given."""
    ids: list[int] = []
    for spec in specs:
        first, sep, last = spec.partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise click.BadParameter(f"{spec!r}: expected an id or a range like 100-120") from None
        if lo < 1 or hi < lo or hi - lo >= MAX_RANGE:
            raise click.BadParameter(f"{spec!r}: ids are positive, ranges ascending and at most {MAX_RANGE} long")
        ids.extend(range(lo, hi + 1))
    return ids


def explain_failure(row: dict, output: str) -> None:
    """One invocation that did not succeed: its error and traceback, and a non-zero exit."""
    state = row.get("state")
    if state is None:
        fail(output, "not-found", row.get("error") or "no such invocation")
    if "error" not in row:
        fail(output, "not-ready", f"invocation {row['invocation_id']} is {state}; no result yet")
    if output == "json":
        emit_json({**result_doc(row), "error": {"code": "failed", "message": row["error"]}})
    elif row.get("traceback"):
        click.echo(row["traceback"].rstrip(), err=True)
    raise CommandFailed(f"invocation {row['invocation_id']} ended {state}: {row['error']}")


@click.command("result")
@click.argument("ids", nargs=-1)
@click.option("--function", "function", default=None, metavar="NAME",
              help="instead of ids: every invocation of this function of yours, oldest first")
@output_option
@click.pass_context
@friendly_errors
def result_command(ctx, ids, function, output):
    """Print return values as JSON.

    One id: its value. Several ids, ranges (100-120) or --function: one JSON line per
    invocation in the order asked ({invocation_id, state, result} or {..., error,
    traceback}); with -o json one JSON list. Exits 1 if any did not succeed."""
    if bool(ids) == bool(function):
        raise click.UsageError("give invocation ids (or ranges like 100-120), or --function NAME (not both)")
    client = make_client(ctx)
    if function:
        wanted = sorted(r["invocation_id"] for r in client.list(function=function, limit=MAX_RANGE))
    else:
        wanted = parse_ids(ids)
    rows = client.results(wanted)
    if len(ids) == 1 and "-" not in ids[0]:
        row = rows[0]
        if "value_json" not in row:
            explain_failure(row, output)
        print_result(row["invocation_id"], row["value_json"], output)
        return
    docs = [result_doc(r) for r in rows]
    if output == "json":
        emit_json(docs)
    else:
        for doc in docs:
            emit_line(doc)
    summary = failure_summary(rows)
    if summary:
        raise CommandFailed(summary)
