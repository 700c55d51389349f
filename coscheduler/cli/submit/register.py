"""submit-function register / update: define a function, or change some of its settings."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import click

from faas_runtime.containers import RUNTIME_NAMES

from ..common import emit, friendly_errors, make_client, output_option


class SizeMB(click.ParamType):
    """A memory size like 512M or 4G, parsed by the same C parser as --faas-share."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from spank_plugin.core import SpecError, parse_size_mb  # loads the C core: only when --mem is given

        try:
            return parse_size_mb(value)
        except SpecError as exc:
            self.fail(str(exc), param, ctx)


def _function_options(f: Callable, defaults: bool) -> Callable:
    """The options of register (with defaults) and update (only what is given)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    opts = [
        click.option("--entrypoint", required=defaults, default=None,
                     help="module:function (Python, e.g. mymod:handler) or path/lib.so:symbol (C, docs/functions.md)"),
        click.option("--code", "code_dir", required=defaults, default=None,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="directory holding the module, on a filesystem the compute nodes see"),
        click.option("--cores", type=click.IntRange(min=1), default=d(1), show_default=defaults),
        click.option("--mem", "mem_mb", type=SizeMB(), default=d("256M"), show_default=defaults,
                     help="memory, e.g. 512M, 2G"),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=d(60.0),
                     show_default=defaults, help="seconds; only lends lasting this long are used"),
        click.option("--max-attempts", type=click.IntRange(min=1), default=d(3), show_default=defaults,
                     help="runs allowed when evictions cut it short"),
        click.option("--image", default=None,
                     help="container image (directory, SquashFS or SIF) to run it in (made absolute here)"),
        click.option("--runtime", type=click.Choice(RUNTIME_NAMES),
                     default=None, help="container runtime for --image (default: the agent's)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _register_options(f: Callable) -> Callable:
    return _function_options(f, defaults=True)


def _update_options(f: Callable) -> Callable:
    return _function_options(f, defaults=False)


def _absolute(path: Optional[str]) -> Optional[str]:
    """A path as the co-scheduler and the nodes must see it: absolute, resolved here,
    where the user typed it (a relative path means nothing to a daemon)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def _check_entrypoint(entrypoint: Optional[str]) -> None:
    if entrypoint is not None and (":" not in entrypoint or entrypoint.startswith(":") or entrypoint.endswith(":")):
        raise click.BadParameter("expected module:function or path/lib.so:symbol", param_hint="--entrypoint")


@click.command("register")
@click.argument("name")
@_register_options
@output_option
@click.pass_context
@friendly_errors
def register_command(ctx, name, entrypoint, code_dir, cores, mem_mb, timeout_s, max_attempts, image, runtime, output):
    """Register function NAME (or replace its definition)."""
    _check_entrypoint(entrypoint)
    # No gid: the co-scheduler takes the function's group from its user database.
    fid = make_client(ctx).register(
        name=name, entrypoint=entrypoint, code_dir=_absolute(code_dir), cores=cores, mem_mb=mem_mb,
        timeout_s=timeout_s, max_attempts=max_attempts, image=_absolute(image), runtime=runtime,
    )
    emit(output, {"function_id": fid, "name": name}, f"registered {name} (id {fid})")


@click.command("update")
@click.argument("name")
@_update_options
@output_option
@click.pass_context
@friendly_errors
def update_command(ctx, name, entrypoint, code_dir, cores, mem_mb, timeout_s, max_attempts, image, runtime, output):
    """Change some settings of function NAME; the others stay."""
    _check_entrypoint(entrypoint)
    changes = {k: v for k, v in dict(entrypoint=entrypoint, code_dir=_absolute(code_dir), cores=cores, mem_mb=mem_mb,
                                     timeout_s=timeout_s, max_attempts=max_attempts, image=_absolute(image),
                                     runtime=runtime).items() if v is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    fn = make_client(ctx).update(name, **changes)
    emit(output, fn, f"updated {name}")
