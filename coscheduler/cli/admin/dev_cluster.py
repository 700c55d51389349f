"""faas-admin dev-cluster: a real local Slurm cluster with slurm-faas, for trying things out."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ...tools.devcluster import DEFAULT_DIR, ClusterError, DevCluster


@click.group("dev-cluster")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), envvar="FAAS_DEV_CLUSTER_DIR",
              default=DEFAULT_DIR, show_default=True, help="where the cluster keeps everything")
@click.pass_context
def dev_cluster_group(ctx, root: Path) -> None:
    """A real local Slurm cluster (3 nodes) with slurm-faas, for trying things out."""
    ctx.obj["cluster"] = DevCluster(root)


def _cluster(ctx) -> DevCluster:
    return ctx.obj["cluster"]


@dev_cluster_group.command("up")
@click.option("--timeout", type=float, default=90.0, show_default=True)
@click.option("--db", "db_url", metavar="URL", help="the co-scheduler's database for a new cluster "
              "(SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db); default: SQLite in --dir")
@click.option("--netns", is_flag=True, help="a new cluster puts each node (slurmd, agent, executors) in a "
              "network namespace of its own, at its own address (docs/dev-cluster.md)")
@click.pass_context
def up(ctx, timeout, db_url, netns):
    """Start (or complete) the cluster; wait until nodes are idle and daemons answer."""
    if db_url or netns:
        ctx.obj["cluster"] = DevCluster(_cluster(ctx).root, db_url=db_url, netns=netns)
    if netns and _cluster(ctx).running() and _cluster(ctx).network is None:
        raise click.ClickException(f"a cluster without --netns runs in {_cluster(ctx).root}: "
                                   "`dev-cluster down` it first")
    try:
        _cluster(ctx).up(timeout)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    root = _cluster(ctx).root
    click.echo(f"dev cluster up in {root}")
    where = "" if root == DEFAULT_DIR.resolve() else f" --dir {root}"
    click.echo(f'use it from a shell with: eval "$(faas-admin dev-cluster{where} env)"')


@dev_cluster_group.command("down")
@click.pass_context
def down(ctx):
    """Cancel the jobs and stop every daemon of the cluster."""
    _cluster(ctx).down()
    click.echo("dev cluster down")


@dev_cluster_group.command("status")
@click.pass_context
def status(ctx):
    """Show each component's pid (or 'stopped') and the nodes' states."""
    cluster = _cluster(ctx)
    any_up = False
    for name, pid in cluster.status().items():
        any_up |= pid is not None
        click.echo(f"{name:<18} {'running, pid ' + str(pid) if pid else 'stopped'}")
    if any_up:
        network = cluster.network  # `up --netns`: each node at its own address
        for node, state in sorted(cluster.node_states().items()):
            click.echo(f"node {node:<13} {state}" + (f" {network.address(node)} (netns {network.namespace(node)})"
                                                     if network and node in network.nodes else ""))


@dev_cluster_group.command("env")
@click.pass_context
def env(ctx):
    """Print shell exports for sbatch/squeue/submit-function: eval "$(faas-admin dev-cluster env)"."""
    try:
        for key, value in _cluster(ctx).env().items():
            click.echo(f"export {key}={shlex.quote(value)}")
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
