"""Alembic environment of the co-scheduler's database.

Run through ``coscheduler.db.Database.create_schema()`` (``faas-admin db upgrade``), which
hands over its connection in ``config.attributes["connection"]``; the plain ``alembic``
command works too with ``-x url=...`` or ``sqlalchemy.url`` set.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from coscheduler.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run them against the database")
run_migrations_online()
