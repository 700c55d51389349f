"""faas-admin db: the co-scheduler's database schema (Alembic migrations)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import click


def _source_options(f: Callable) -> Callable:
    """--db and --config, taken before the subcommand or after it (``db current --config F``)."""
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="the co-scheduler's configuration file")(f)
    return click.option("--db", "db_url", metavar="URL", help="the database (SQLAlchemy URL); default: db_url "
                        "of the co-scheduler's configuration ($FAAS_DB_URL, $FAAS_CONFIG or "
                        "/etc/slurm-faas/coscheduler.toml)")(f)


def _subcommand(f: Callable) -> Callable:
    """A db subcommand: its own --db/--config win over the group's."""
    @functools.wraps(f)
    def wrapper(ctx, db_url: Optional[str], config_path: Optional[Path], **kw: Any) -> Any:
        group_config, group_url = ctx.obj["db_source"]
        ctx.obj["db_source"] = (config_path or group_config, db_url or group_url)
        return f(ctx, **kw)

    return click.pass_context(_source_options(wrapper))


@click.group("db")
@_source_options
@click.pass_context
def db_group(ctx, db_url: Optional[str], config_path: Optional[Path]) -> None:
    """The co-scheduler's database schema (Alembic migrations shipped with slurm-faas)."""
    ctx.obj["db_source"] = (config_path, db_url)


@contextlib.contextmanager
def _database(ctx, doing: str) -> Iterator[tuple[Any, str]]:
    """The database the options name and its URL as shown (no password), resolved here
    and not in the group (--help needs none); a failure inside the block becomes one
    line, "cannot <doing> <url>: <reason>"."""
    from ... import db as D
    from ...config import ConfigError, load
    from ...daemon import _safe_url

    config_path, db_url = ctx.obj["db_source"]
    try:
        url = load(config_path, overrides={"db_url": db_url}).db_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    shown = _safe_url(url)
    database = D.Database(url, pool_size=1)
    try:
        yield database, shown
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad credentials; Alembic rolled back
        raise click.ClickException(f"cannot {doing} {shown}: {exc}") from None
    finally:
        database.dispose()


@db_group.command("current")
@_subcommand
def current(ctx):
    """Show the schema revision the database is at, and the newest one; exit 1 if behind."""
    with _database(ctx, "read") as (database, shown):
        rev, head = database.revision(), database.head_revision()
    click.echo(f"{shown}: revision {rev or 'none (no schema)'}, newest {head}"
               + ("" if rev == head else " (run `faas-admin db upgrade`)"))
    ctx.exit(0 if rev == head else 1)


@db_group.command("upgrade")
@_subcommand
def upgrade(ctx):
    """Migrate the database to the newest schema (creates it when empty; idempotent).

    The co-scheduler does this itself when it starts; run it beforehand to migrate a
    production database in a maintenance window, with the old co-scheduler stopped."""
    with _database(ctx, "upgrade") as (database, shown):
        before = database.revision()
        database.create_schema()
        after = database.revision()
    click.echo(f"{shown}: {before or 'empty'} -> {after}"
               + (" (already the newest)" if before == after else ""))
