"""faas-admin keygen: the CurveZMQ keys of the co-scheduler and the agents."""
from __future__ import annotations

from pathlib import Path

import click

from faas_runtime.curve import generate


@click.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--agent", "agents", multiple=True, metavar="NODE", help="a node whose agent gets a key pair (repeat)")
@click.option("--force", is_flag=True, help="replace existing keys (every holder of the old ones must get the new)")
def keygen_command(directory: Path, agents: tuple[str, ...], force: bool) -> None:
    """Generate CurveZMQ keys for the co-scheduler and the agents of NODEs into DIRECTORY.

    Copy coscheduler.key (public) to every node and login node, coscheduler.key_secret
    to the co-scheduler's host only, and agents/NODE.key_secret to NODE only; then start
    the daemons with FAAS_CURVE_DIR (or --curve-dir) pointing at their copy.
    """
    written = generate(directory, list(agents), force=force)
    for path in written:
        click.echo(str(path))
    if not written:
        click.echo(f"keys exist in {directory}; nothing written (use --force to replace them)")
