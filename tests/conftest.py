"""Shared fixtures: real services, started by the tests themselves.

- ``cluster``: a real Slurm cluster with slurm-faas (coscheduler.tools.devcluster), one per session.
- ``netns_cluster``: the same with every node in a network namespace of its own (``up --netns``).
- ``postgres_url``: a private PostgreSQL server in a temporary directory.
- ``database``: a fresh schema on SQLite and on PostgreSQL (parametrised).

With FAAS_TEST_REQUIRE_ALL=1 (set by `make test`, and so in CI) a service that cannot be
started fails the tests instead of skipping them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("FAAS_TEST_REQUIRE_ALL") == "1"


def missing(what: str) -> None:
    """The one way a test says a service or tool is missing: a failure under
    FAAS_TEST_REQUIRE_ALL=1 (CI), a skip otherwise. Works in a test, a fixture, and at
    module level (there the failure is a collection error, which fails the run too)."""
    if REQUIRE_ALL:
        pytest.fail(f"{what} (FAAS_TEST_REQUIRE_ALL=1: the test setup must provide it)", pytrace=False)
    pytest.skip(f"missing: {what}", allow_module_level=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say out loud what was not tested (``make unit`` runs without FAAS_TEST_REQUIRE_ALL)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and not REQUIRE_ALL:
        reasons = sorted({str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
                          for r in skipped})
        terminalreporter.write_sep("!", f"{len(skipped)} tests NOT run (a service or tool is missing)", yellow=True)
        for reason in reasons:
            terminalreporter.write_line(f"  {reason}")
        terminalreporter.write_line("  FAAS_TEST_REQUIRE_ALL=1 (make test, CI) turns each of these into a failure")


@pytest.fixture(scope="session")
def cluster():
    yield from _dev_cluster(netns=False)


@pytest.fixture(scope="session")
def netns_cluster():
    """The dev cluster with each node in a network namespace of its own (``up --netns``):
    tests/integration/test_netns_cluster.py runs the backfill, eviction and hot-lease tests on it."""
    from coscheduler.tools import devcluster_netns

    usable, why = devcluster_netns.available()
    if not usable:
        missing(f"network namespaces: {why}")
    yield from _dev_cluster(netns=True)


def _dev_cluster(netns: bool):
    from coscheduler.tools.devcluster import DevCluster

    yield from running_cluster(lambda root: DevCluster(root, netns=netns),
                               "faas-netns-cluster-" if netns else "faas-cluster-", timeout_s=90)


def running_cluster(make, prefix: str, timeout_s: float):
    """(generator, for a fixture) ``make(root)``'s cluster, up in a fresh directory for the
    fixture's lifetime, then down and removed (kept with FAAS_KEEP_CLUSTER=1)."""
    if os.geteuid() != 0:
        missing("the dev cluster runs Slurm daemons and needs root")
    for tool in ("slurmctld", "slurmd", "munged", "cc"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps)")
    # Not under pytest's tmp dir: munged wants every parent of its socket world-searchable.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    c = make(root)
    try:
        c.up(timeout_s=timeout_s)
    except Exception:
        c.down()
        raise
    yield c
    c.down()
    if os.environ.get("FAAS_KEEP_CLUSTER") != "1":
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory):
    """tests/functions/native_fns.c compiled: the code dir of ``libnative_fns.so:<symbol>``."""
    from tests.functions import native_build

    try:
        return native_build.build(tmp_path_factory.mktemp("native"))
    except RuntimeError as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def postgres_url():
    from coscheduler.tools.private_postgres import PostgresMissing, private_postgres

    # Not under pytest's tmp dir: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="faas-pg-"))
    try:
        with private_postgres(root) as url:
            yield url
    except PostgresMissing as exc:
        missing(str(exc))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    from sqlalchemy import text

    from coscheduler.db import Database

    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'faas.db'}")
    else:
        db = Database(request.getfixturevalue("postgres_url"))
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.create_schema()
    yield db
    db.dispose()
