"""A throwaway PostgreSQL server: initdb into a directory, listening on a Unix socket there
only (no TCP), with a database ``faas`` of role ``faas``. The tests' ``postgres_url``
fixture and the benchmarks start theirs here, so there is one recipe to keep right."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed (make deps)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_postgres(root: Path, settings: tuple[str, ...] = ()) -> Iterator[str]:
    """Start a server whose data and socket live in ``root`` (its parents must be searchable by
    the postgres user, so not under a 0700 home); yields its SQLAlchemy URL and stops it after.
    ``settings``: extra ``name=value`` server settings (e.g. ``synchronous_commit=off``)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        raise PostgresMissing("PostgreSQL server binaries are not installed (make deps)")
    bindir = Path(initdb[-1]).parent
    data, port = root / "data", _free_port()
    # As root the server must run as postgres (it refuses root); the directory becomes its.
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(root, "postgres")
    options = " ".join([f"-k {root} -p {port} -c listen_addresses=''", *(f"-c {s}" for s in settings)])
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "faas"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "pg.log"),
                    "-o", options, "start"], check=True, capture_output=True)
    try:
        subprocess.run([*run_as, str(bindir / "createdb"), "-h", str(root), "-p", str(port), "-U", "faas", "faas"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://faas@/faas?host={root}&port={port}"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
