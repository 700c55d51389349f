"""Connecting to the database: the ``Database`` class and the set-up around it.

Owns the engine and the session factory (``Database.session()`` is one transaction, the
caller's), what each backend needs on every connection (SQLite: WAL, foreign keys, BEGIN
IMMEDIATE for writers; psycopg: binary arrays), the hook into the Alembic migrations of
``coscheduler/migrations`` (``create_schema``, ``revision``, ``head_revision``), and
``make_private`` for the modes of an SQLite queue's files.

May not touch: invocations' states (queue.py is the one place).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection=None):
    """An Alembic config for the migrations shipped in this package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class Database:
    """An engine and a session factory; ``session()`` is one transaction."""

    def __init__(self, url: str, pool_size: int = 5):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Writers take turns; a busy timeout covers the CLI and a second daemon beside it.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL does not kill the daemon
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        elif self.engine.dialect.driver == "psycopg":
            event.listen(self.engine, "connect", _psycopg_connect)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_schema(self) -> None:
        """Bring the schema to the newest migration (idempotent; Alembic keeps the revision).

        A database made by an older slurm-faas with ``create_all`` (tables, no revision) is
        stamped as the first revision, whose schema it has, and upgraded from there.
        """
        from alembic import command

        with self.engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            cfg = alembic_config(conn)
            if "invocations" in tables and "alembic_version" not in tables:
                command.stamp(cfg, "0001")
            command.upgrade(cfg, "head")

    def revision(self) -> Optional[str]:
        """The migration the database is at (None: no schema yet)."""
        from alembic.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction. ``write=True`` on SQLite takes the write lock at BEGIN
        (BEGIN IMMEDIATE): the serialised path of claims; on PostgreSQL row locks do that."""
        with self._sessions() as s:
            with s.begin():
                if write and self.dialect == "sqlite":
                    s.connection(execution_options={"sqlite_immediate": True})
                yield s

    def check_each_transaction(self, check: Callable[[Connection], None]) -> None:
        """Run ``check(connection)`` in every ``session()`` before its first statement; what
        it raises fails the transaction (coscheduler/leader.py: the active co-scheduler's fence)."""
        event.listen(self._sessions, "after_begin", lambda _session, _tx, connection: check(connection))

    def dispose(self) -> None:
        self.engine.dispose()


def make_private(url: str) -> None:
    """An SQLite queue's files (the database, its -wal and -shm) are the service's alone
    (0600), whoever created them; PostgreSQL keeps its own files private (docs/security.md
    says how to restrict who may connect)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = parsed.database + suffix
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not there (yet): created later under the daemon's umask 077
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _sqlite_connect(dbapi_conn, _record) -> None:
    # Let SQLAlchemy emit BEGIN itself (pysqlite's own transaction handling defers BEGIN
    # and breaks SAVEPOINT and BEGIN IMMEDIATE).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (CLI, admin) never block the daemon
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _psycopg_connect(dbapi_conn, _record) -> None:
    # Python lists (the arrays of the bulk statements) go in PostgreSQL's binary array
    # format: psycopg's default, text, quotes every element through a regular expression.
    from psycopg.types.array import ListBinaryDumper

    dbapi_conn.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")
