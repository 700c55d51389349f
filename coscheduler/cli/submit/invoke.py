"""submit-function invoke: queue one invocation, or one per line of a batch file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..common import emit, friendly_errors, make_client, output_option
from .result import print_result


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
@click.option("--payload", default=None, help="the argument, as JSON [default: null]")
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
    payload = "null" if payload is None else payload
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    client = make_client(ctx)
    inv_id = client.invoke(name, payload, priority)
    if not wait:
        emit(output, {"invocation_id": inv_id}, str(inv_id))
        return
    final = client.wait(inv_id, wait_timeout)
    if final["state"] != "SUCCEEDED":
        raise click.ClickException(f"invocation {inv_id} ended {final['state']}: {final.get('error')}")
    print_result(inv_id, client.result_json(inv_id), output)


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
        emit(output, {"invocation_ids": ids}, "\n".join(map(str, ids)))
        return
    rows = client.wait_many(ids, wait_timeout)
    states: dict[str, int] = {}
    for row in rows.values():
        states[row["state"]] = states.get(row["state"], 0) + 1
    emit(output, {"invocation_ids": ids, "states": states}, " ".join(f"{k} {v}" for k, v in sorted(states.items())))
    if set(states) != {"SUCCEEDED"}:
        raise click.ClickException(f"{len(ids) - states.get('SUCCEEDED', 0)} of {len(ids)} invocations did not succeed")
