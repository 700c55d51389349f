"""Options and error handling shared by the command lines."""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Optional

import click

from faas_runtime.queue_client import DEFAULT_ENDPOINT, Client, RequestError, Unavailable
from faas_runtime.auth import AuthError


def coscheduler_options(f: Callable) -> Callable:
    """--coscheduler and --munge-socket, from the environment that `dev-cluster env` prints."""
    f = click.option("--munge-socket", envvar="FAAS_MUNGE_SOCKET", default=None,
                     help="munged socket (default: munge's own)  [env: FAAS_MUNGE_SOCKET]")(f)
    f = click.option("--coscheduler", "endpoint", envvar="FAAS_COSCHEDULER", default=DEFAULT_ENDPOINT,
                     show_default=True, help="co-scheduler address; several, comma-separated: the active one of "
                     "them (high availability)  [env: FAAS_COSCHEDULER]")(f)
    return f


def coscheduler_group(f: Callable) -> click.Group:
    """The root group of a command line whose commands talk to the co-scheduler.

    ``f`` gives the name and the help; --coscheduler and --munge-socket land in
    ``ctx.obj``, where :func:`make_client` finds them."""

    @functools.wraps(f)
    def group(ctx: click.Context, endpoint: str, munge_socket: Optional[str]) -> None:
        ctx.obj = {"endpoint": endpoint, "munge_socket": munge_socket}

    return click.group()(coscheduler_options(click.pass_context(group)))


def output_option(f: Callable) -> Callable:
    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                        show_default=True, help="json: one JSON document for scripts")(f)


def make_client(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj
    client = Client(obj["endpoint"], obj["munge_socket"])
    ctx.call_on_close(client.close)
    return client


class CommandFailed(click.ClickException):
    """A failure whose document (with ``-o json``) the command has printed already."""


def fail(output: Optional[str], code: str, message: str) -> None:
    """Stop with ``message`` on stderr and a non-zero exit; with ``-o json`` an error
    document {"error": {"code", "message"}} on stdout first, so scripts always get JSON."""
    if output == "json":
        emit_json({"error": {"code": code, "message": message}})
    raise CommandFailed(message)


def friendly_errors(f: Callable) -> Callable:
    """Turn the client's typed errors into one-line messages and a non-zero exit (and,
    with ``-o json``, an error document on stdout)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = kwargs.get("output")
        try:
            return f(*args, **kwargs)
        except (CommandFailed, click.UsageError):
            raise
        except RequestError as exc:
            fail(output, exc.code, str(exc))
        except Unavailable as exc:
            fail(output, "unavailable", str(exc))
        except AuthError as exc:
            fail(output, "auth", str(exc))
        except TimeoutError as exc:
            fail(output, "timeout", str(exc))
        except click.ClickException as exc:
            fail(output, "failed", exc.message)

    return wrapper


def emit_json(value: Any) -> None:
    # allow_nan=False: NaN and Infinity are not JSON, and scripts' parsers refuse them.
    click.echo(json.dumps(value, indent=1, sort_keys=True, allow_nan=False))


def emit_line(value: Any) -> None:
    """One JSON document on one line (JSON lines)."""
    click.echo(json.dumps(value, sort_keys=True, allow_nan=False))


def strict_json(text: str) -> Any:
    """A stored value, refusing NaN and Infinity (an older executor let them through)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def emit_rows(output: str, rows: list, header: str, line: Callable[[dict], str]) -> None:
    """``rows`` as one JSON document with ``--output json``, else a table: ``header``,
    then ``line(row)`` for each row."""
    if output == "json":
        emit_json(rows)
        return
    click.echo(header)
    for row in rows:
        click.echo(line(row))


def emit(output: str, doc: Any, text: str) -> None:
    """``doc`` as one JSON document with ``--output json``, else ``text``."""
    if output == "json":
        emit_json(doc)
    else:
        click.echo(text)
