"""The agent's configuration file: /etc/slurm-faas/agent.toml (or --config FILE), whose keys
are the long names of faas-agent's options, taken as their defaults (the command line and
the environment still win). Owns the file's reading; may not touch the agent itself."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

DEFAULT_CONFIG = Path("/etc/slurm-faas/agent.toml")


def load_config(ctx: click.Context, _param: click.Parameter, path: Optional[Path]) -> Optional[Path]:
    """--config FILE (else /etc/slurm-faas/agent.toml if it exists): TOML whose keys are the
    long names of the other options, as their defaults (the command line and the
    environment still win)."""
    if path is None and not DEFAULT_CONFIG.exists():
        return None
    path = path or DEFAULT_CONFIG
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    names = {o[2:].replace("-", "_"): p.name for p in ctx.command.params for o in p.opts if o.startswith("--")}
    unknown = sorted(set(doc) - set(names) - {"config"})
    if unknown:
        raise click.BadParameter(f"unknown key {unknown[0]!r} in {path}", param_hint="--config")
    ctx.default_map = {names[k]: v for k, v in doc.items()}
    return path
