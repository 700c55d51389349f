"""The agent's configuration: faas-agent's options, and its file /etc/slurm-faas/agent.toml
(or --config FILE), whose keys are the long names of those options, taken as their defaults
(the command line and the environment still win). Owns the options and the file's reading;
may not touch the agent itself."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from . import curve
from .containers import RUNTIME_NAMES
from .failover import joined

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
    if isinstance(doc.get("coscheduler"), str):  # one address, or several comma-separated, as on the command line
        doc["coscheduler"] = [doc["coscheduler"]]
    ctx.default_map = {names[k]: v for k, v in doc.items()}
    return path


def agent_options(command):
    """faas-agent's options, each of which is also a key of the configuration file."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


_OPTIONS = [
    click.option("--config", type=click.Path(dir_okay=False, path_type=Path), envvar="FAAS_AGENT_CONFIG",
                 is_eager=True, expose_value=False, callback=load_config,
                 help="TOML file of option defaults [default: /etc/slurm-faas/agent.toml if present]"),
    click.option("--node", envvar="FAAS_NODE", required=True, help="this node's Slurm name"),
    click.option("--spool", envvar="FAAS_SPOOL", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("/var/spool/slurm-faas"), show_default=True, help="the plugin's spool directory"),
    click.option("--coscheduler", "endpoint", envvar="FAAS_COSCHEDULER", required=True, multiple=True, callback=joined,
                 help="e.g. tcp://head:7800; several (repeated or comma-separated): the active one of them"),
    click.option("--workdir", envvar="FAAS_AGENT_WORKDIR", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("/var/lib/slurm-faas/agent"), show_default=True),
    click.option("--grace", type=float, default=2.0, show_default=True, help="seconds between SIGTERM and SIGKILL on revoke"),
    click.option("--keep-warm", "keep_warm_s", type=float, default=60.0, show_default=True,
                 help="seconds an idle warm executor is kept"),
    click.option("--container-runtime", type=click.Choice([r for r in RUNTIME_NAMES if r != "none"]),
                 default="charliecloud", show_default=True, help="for functions that name an image but no runtime"),
    click.option("--hot-host", default=None,
                 help="address of this node that hot clients reach executors at "
                      "[default: this node's address towards the co-scheduler]"),
    click.option("--cgroups/--no-cgroups", default=True, show_default=True,
                 help="confine executors in cgroups (needs root, or a delegated subtree)"),
    click.option("--pids-max", type=click.IntRange(min=8), default=512, show_default=True, help="processes per executor"),
    click.option("--allow-root-functions", is_flag=True,
                 help="run functions that root submitted as root (test clusters only)"),
    click.option("--munge-socket", envvar="FAAS_MUNGE_SOCKET", default=None,
                 help="munged's socket (default: munge's own): the HELLO's credential, and the WELCOME's check"),
    click.option("--coscheduler-uid", "coscheduler_uids", type=int, multiple=True, default=(0,), show_default=True,
                 help="uid the co-scheduler runs as (its WELCOME must carry a munge credential of it); repeatable"),
    click.option("--curve-dir", envvar=curve.ENV, type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="CurveZMQ keys from `faas-admin keygen` (this node's secret, the co-scheduler's public key)"),
    click.option("--memory-margin", "memory_margin", type=(float, float), default=(128.0, 5.0), show_default=True,
                 help="MIB PERCENT: a lend keeps max(MIB, PERCENT % of the job's memory) free for the job"),
    click.option("--memory-hold-down", type=click.FloatRange(min=0), default=10.0, show_default=True,
                 help="seconds the job must leave room before a shrunk lend grows again"),
    click.option("--log-file", type=click.Path(dir_okay=False), default=None),
    click.option("--log-level", default="INFO", show_default=True),
]
