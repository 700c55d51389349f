"""faas-admin: the sysadmin's command line."""
from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import Optional

import click

from ..devcluster import DEFAULT_DIR, ClusterError, DevCluster
from .analyze import analyze
from .plugin import install_plugin, uninstall_plugin
from .keys import keygen
from .common import coscheduler_options, emit_json, friendly_errors, make_client, output_option


@click.group()
@coscheduler_options
@click.pass_context
def main(ctx: click.Context, endpoint: str, munge_socket: Optional[str]) -> None:
    """Administer slurm-faas: slots, the SPANK plugin, the local dev cluster."""
    ctx.obj = {"endpoint": endpoint, "munge_socket": munge_socket}


@main.command()
@output_option
@click.pass_context
@friendly_errors
def slots(ctx, output):
    """List the capacity batch jobs lend (node, job, lent CPUs, memory, state)."""
    rows = make_client(ctx).slots()
    if output == "json":
        emit_json(rows)
        return
    click.echo(f"{'NODE':<8} {'JOB':>7} {'STATE':<8} {'MEM_MB':>7} {'ENDS':<20} CPUS (OS CPUS)")
    for r in rows:
        ends = dt.datetime.fromtimestamp(r["end_time"]).isoformat(timespec="seconds") if r["end_time"] else "-"
        click.echo(f"{r['node']:<8} {r['job_id']:>7} {r['state']:<8} {r['mem_mb']:>7} {ends:<20} "
                   f"{r['slurm_cpus']} ({sorted(set(r['os_cpus']))})")


@main.group("db")
@click.option("--db", "db_url", metavar="URL", help="the database (SQLAlchemy URL); default: db_url of the "
              "co-scheduler's configuration ($FAAS_DB_URL, $FAAS_CONFIG or /etc/slurm-faas/coscheduler.toml)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="the co-scheduler's configuration file")
@click.pass_context
def db(ctx, db_url: Optional[str], config_path: Optional[Path]) -> None:
    """The co-scheduler's database schema (Alembic migrations shipped with slurm-faas)."""
    ctx.obj["db_source"] = (config_path, db_url)


def _database(ctx):
    """The database the options name (resolved here, not in the group: --help needs none)."""
    from .. import db as D
    from ..config import ConfigError, load

    config_path, db_url = ctx.obj["db_source"]
    try:
        ctx.obj["db_url"] = load(config_path, overrides={"db_url": db_url}).db_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return D.Database(ctx.obj["db_url"], pool_size=1)


@db.command()
@click.pass_context
def current(ctx):
    """Show the schema revision the database is at, and the newest one; exit 1 if behind."""
    from ..daemon import _safe_url

    database = _database(ctx)
    try:
        rev, head = database.revision(), database.head_revision()
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad credentials ...
        raise click.ClickException(f"cannot read {_safe_url(ctx.obj['db_url'])}: {exc}") from None
    finally:
        database.dispose()
    click.echo(f"{_safe_url(ctx.obj['db_url'])}: revision {rev or 'none (no schema)'}, newest {head}"
               + ("" if rev == head else " (run `faas-admin db upgrade`)"))
    ctx.exit(0 if rev == head else 1)


@db.command()
@click.pass_context
def upgrade(ctx):
    """Migrate the database to the newest schema (creates it when empty; idempotent).

    The co-scheduler does this itself when it starts; run it beforehand to migrate a
    production database in a maintenance window, with the old co-scheduler stopped."""
    from ..daemon import _safe_url

    database = _database(ctx)
    try:
        before = database.revision()
        database.create_schema()
        after = database.revision()
    except Exception as exc:  # noqa: BLE001 - reported in one line; Alembic rolled back
        raise click.ClickException(f"cannot upgrade {_safe_url(ctx.obj['db_url'])}: {exc}") from None
    finally:
        database.dispose()
    click.echo(f"{_safe_url(ctx.obj['db_url'])}: {before or 'empty'} -> {after}"
               + (" (already the newest)" if before == after else ""))


@main.group("dev-cluster")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), envvar="FAAS_DEV_CLUSTER_DIR",
              default=DEFAULT_DIR, show_default=True, help="where the cluster keeps everything")
@click.pass_context
def dev_cluster(ctx, root: Path) -> None:
    """A real local Slurm cluster (3 nodes) with slurm-faas, for trying things out."""
    ctx.obj["cluster"] = DevCluster(root)


def _cluster(ctx) -> DevCluster:
    return ctx.obj["cluster"]


@dev_cluster.command()
@click.option("--timeout", type=float, default=90.0, show_default=True)
@click.option("--db", "db_url", metavar="URL", help="the co-scheduler's database for a new cluster "
              "(SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db); default: SQLite in --dir")
@click.pass_context
def up(ctx, timeout, db_url):
    """Start (or complete) the cluster; wait until nodes are idle and daemons answer."""
    if db_url:
        ctx.obj["cluster"] = DevCluster(_cluster(ctx).root, db_url=db_url)
    try:
        _cluster(ctx).up(timeout)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"dev cluster up in {_cluster(ctx).root}")
    click.echo('use it from a shell with: eval "$(faas-admin dev-cluster env)"')


@dev_cluster.command()
@click.pass_context
def down(ctx):
    """Cancel the jobs and stop every daemon of the cluster."""
    _cluster(ctx).down()
    click.echo("dev cluster down")


@dev_cluster.command()
@click.pass_context
def status(ctx):
    """Show each component's pid (or 'stopped') and the nodes' states."""
    cluster = _cluster(ctx)
    any_up = False
    for name, pid in cluster.status().items():
        any_up |= pid is not None
        click.echo(f"{name:<18} {'running, pid ' + str(pid) if pid else 'stopped'}")
    if any_up:
        for node, state in sorted(cluster.node_states().items()):
            click.echo(f"node {node:<13} {state}")


@dev_cluster.command()
@click.pass_context
def env(ctx):
    """Print shell exports for sbatch/squeue/submit-function: eval "$(faas-admin dev-cluster env)"."""
    try:
        for key, value in _cluster(ctx).env().items():
            click.echo(f"export {key}={shlex.quote(value)}")
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None


main.add_command(analyze)
main.add_command(install_plugin)
main.add_command(uninstall_plugin)
main.add_command(keygen)
