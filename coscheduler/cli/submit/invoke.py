"""submit-function invoke: queue one invocation, or one per line of a batch file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..common import CommandFailed, emit, emit_json, friendly_errors, make_client, output_option
from .result import explain_failure, failure_summary, print_result, result_doc
from .wait import wait_all, wait_one


def _read_payload(value: str) -> str:
    """--payload: JSON text, ``@FILE`` (its contents) or ``-`` (stdin): large payloads
    need not fit on a command line."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}", param_hint="--payload") from None
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"{value[1:]}: not UTF-8 text: {exc}", param_hint="--payload") from None
    else:
        text = value
    try:
        json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    return text.strip()


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


@click.command("invoke")
@click.argument("name")
@click.option("--payload", default=None,
              help="the argument as JSON, @FILE (read from FILE) or - (from stdin) [default: null]")
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="FILE.jsonl: one invocation per line, each line its JSON payload")
@click.option("--priority", type=int, default=0, show_default=True, help="priority class (higher first)")
@click.option("--wait", is_flag=True, help="wait and print the return value as JSON (with --batch: the states)")
@click.option("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
@output_option
@click.pass_context
@friendly_errors
def invoke_command(ctx, name, payload, batch_file, priority, wait, wait_timeout, output):
    """Invoke function NAME once (or once per line of --batch); print the invocation id(s)."""
    if batch_file is not None:
        if payload is not None:
            raise click.UsageError("give --payload or --batch, not both")
        _invoke_batch(ctx, name, batch_file, priority, wait, wait_timeout, output)
        return
    payload = "null" if payload is None else _read_payload(payload)
    client = make_client(ctx)
    inv_id = client.invoke(name, payload, priority)
    if not wait:
        emit(output, {"invocation_id": inv_id}, str(inv_id))
        return
    wait_one(client, inv_id, wait_timeout)
    row = client.results([inv_id])[0]
    if "value_json" not in row:
        explain_failure(row, output)
    print_result(inv_id, row["value_json"], output)


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
    # Waiting: subscribed as they are queued (ENDED comes as they end, no SUBSCRIBE of them all after).
    subscribe = wait and limits.get("subscribe") is True
    with click.progressbar(length=len(payloads), label=f"queueing {len(payloads)} invocations of {name}",
                           file=sys.stderr) as bar:
        ids = client.invoke_batch(name, payloads, priority, chunk=chunk, progress=bar.update, subscribe=subscribe)
    if not wait:
        emit(output, {"invocation_ids": ids}, "\n".join(map(str, ids)))
        return
    # The text summary needs only states (and the failures' errors): SUCCEEDED ones are not read back.
    done = wait_all(client, ids, wait_timeout, subscribed=subscribe, read_succeeded=output == "json")
    rows = client.results(ids) if output == "json" else [done[i] for i in ids]
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    if output == "json":  # the ids with their states and values, in the order of the file
        emit_json({"invocation_ids": ids, "states": states, "invocations": [result_doc(r) for r in rows]})
    else:
        click.echo(" ".join(f"{k} {v}" for k, v in sorted(states.items())))
    summary = failure_summary(rows)
    if summary:
        raise CommandFailed(summary)
