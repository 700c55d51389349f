"""The dev cluster with two co-schedulers on one PostgreSQL database (high availability).

``HADevCluster(root, db_url)`` is the ordinary dev cluster (devcluster.py) whose
co-scheduler is two: ``faas-coscheduler`` and ``faas-coscheduler-b``, each started with
``--ha`` on its own port, one active and one standing by (coscheduler/leader.py). Agents
and clients are given both addresses (``coscheduler_endpoint`` is the comma-separated
pair) and follow the active one. ``active()`` says which is active; ``kill_active()``
kills it with SIGKILL, as a crashed host would; ``start_missing()`` starts again the
ones that are not running (they come back as standbys). The failover test
(tests/integration/test_failover.py) and bench/bench_failover.py use it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Optional

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from .devcluster import Component, DevCluster
from .devcluster_procs import ClusterError, free_port, wait_for

COSCHEDULERS = ("faas-coscheduler", "faas-coscheduler-b")
PROGRAM = "coscheduler.daemon"


class HADevCluster(DevCluster):
    def __init__(self, root: Path, db_url: str, accounting: bool = False):
        if not db_url.startswith("postgresql"):
            raise ClusterError("two co-schedulers need a PostgreSQL database (db_url postgresql+psycopg://...)")
        super().__init__(root, db_url=db_url, accounting=accounting)

    def components(self) -> list[Component]:
        comps = super().components()
        first = next(i for i, c in enumerate(comps) if c.name == COSCHEDULERS[0])
        return [*comps[:first + 1], Component(COSCHEDULERS[1], PROGRAM), *comps[first + 1:]]

    def _prepare_fresh(self) -> None:
        super()._prepare_fresh()
        state = json.loads(self.state_file.read_text())
        state["ports"]["coscheduler-b"] = free_port()
        self.state_file.write_text(json.dumps(state, indent=1))

    def address_of(self, name: str) -> str:
        port = self.ports()["coscheduler" if name == COSCHEDULERS[0] else "coscheduler-b"]
        return f"tcp://{self.head_address}:{port}"

    @property
    def coscheduler_endpoint(self) -> str:
        return ",".join(self.address_of(name) for name in COSCHEDULERS)

    def _start_coscheduler(self) -> None:
        self.start_missing()

    def start_missing(self) -> None:
        """Start the co-schedulers that are not running (as standbys, if one is active)."""
        for name in COSCHEDULERS:
            if self.pid_of(Component(name, PROGRAM)) is None:
                self._spawn_python(name, [
                    "-m", PROGRAM, "--ha", "--config", str(self.coscheduler_config),
                    "--db", self.db_url, "--bind", self.address_of(name),
                    "--munge-socket", str(self.munge_socket), "--log-file", str(self.root / "log" / f"{name}.log"),
                    "--reconcile-interval", "2", "--foreground",
                ])

    def active(self) -> Optional[str]:
        """The name of the co-scheduler that holds the leadership now (None: neither yet)."""
        engine = create_engine(self.db_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                holder = conn.execute(text("SELECT holder FROM coscheduler_leader WHERE id = 1")).scalar()
        except Exception:  # no schema yet
            return None
        finally:
            engine.dispose()
        if not holder:
            return None
        host, _, pid = str(holder).rpartition(":")
        for name in COSCHEDULERS:
            if host == socket.gethostname() and str(self.pid_of(Component(name, PROGRAM))) == pid:
                return name
        return None

    def kill_active(self, timeout_s: float = 60.0) -> str:
        """SIGKILL the active co-scheduler; its name."""
        wait_for("an active co-scheduler", lambda: self.active() is not None, timeout_s, self.root / "log")
        name = self.active()
        assert name is not None
        pid = self.pid_of(Component(name, PROGRAM))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(f"{name} gone", lambda: self.pid_of(Component(name, PROGRAM)) is None, timeout_s, self.root / "log")
        return name
