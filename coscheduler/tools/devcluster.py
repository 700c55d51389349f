"""A real local Slurm cluster with slurm-faas, for development, the demo and the tests.

munged (own key and socket), slurmctld, three slurmd (``slurmd -N n1..n3`` on
127.0.0.1, each declaring 8 CPUs and 16 GB), the faas SPANK plugin through
plugstack.conf.d, one faas-coscheduler (SQLite) and one faas-agent per node. Everything
(state, logs, sockets, pid files, the database) lives under one directory, and the ports
are chosen free at ``up``, so clusters in different directories never collide.

``up`` is idempotent: with nothing running it starts a fresh cluster; otherwise it
starts only the components that are not running. ``down`` cancels jobs first (their
steps outlive slurmd) and then stops every daemon by its pid file, TERM then KILL.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

NODES = ("n1", "n2", "n3")
NODE_CPUS = 8
TEMPLATES = Path(__file__).resolve().parents[2] / "slurm.conf.d" / "dev-cluster"
DEFAULT_DIR = Path(os.environ.get("FAAS_DEV_CLUSTER_DIR", Path.home() / ".local/state/slurm-faas/dev-cluster"))


class ClusterError(Exception):
    """The cluster could not be brought to the asked state; the message says where to look."""


@dataclass(frozen=True)
class Component:
    name: str
    program: str  # what /proc/PID/cmdline must mention (guards against reused pids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float, log_hint: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ClusterError(f"{what} not ready after {timeout_s:g} s; see {log_hint}")


class DevCluster:
    def __init__(self, root: Path = DEFAULT_DIR, db_url: Optional[str] = None):
        """``db_url``: the co-scheduler's database for a new cluster (default: SQLite in
        ``root``); a running cluster keeps the one it was started with."""
        self.root = Path(root).resolve()
        self.state_file = self.root / "cluster.json"
        self._db_url = db_url

    # -- layout -------------------------------------------------------------------------

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "run" / "munge.socket.2"

    @property
    def slurm_conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def db_url(self) -> str:
        try:
            return json.loads(self.state_file.read_text())["db_url"]
        except (OSError, ValueError, KeyError):
            return self._db_url or f"sqlite:///{self.root / 'faas.db'}"

    def components(self) -> list[Component]:
        return (
            [Component("munged", "munged"), Component("slurmctld", "slurmctld")]
            + [Component(f"slurmd-{n}", "slurmd") for n in NODES]
            + [Component("faas-coscheduler", "coscheduler.daemon")]
            + [Component(f"faas-agent-{n}", "faas_runtime.agent") for n in NODES]
        )

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    def ports(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())["ports"]
        except (OSError, ValueError, KeyError):
            raise ClusterError(f"no cluster in {self.root}: run `faas-admin dev-cluster up`") from None

    @property
    def coscheduler_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.ports()['coscheduler']}"

    def env(self) -> dict[str, str]:
        """What a shell (or a test) needs to use this cluster with the ordinary commands."""
        return {
            "SLURM_CONF": str(self.slurm_conf),
            "FAAS_COSCHEDULER": self.coscheduler_endpoint,
            "FAAS_MUNGE_SOCKET": str(self.munge_socket),
            "FAAS_DEV_CLUSTER_DIR": str(self.root),
        }

    def client_env(self) -> dict[str, str]:
        """os.environ plus ``env()``, with this Python's scripts (submit-function ...) on PATH."""
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {**os.environ, **self.env(), "PATH": path}

    # -- state of the components --------------------------------------------------------

    def pid_of(self, comp: Component) -> Optional[int]:
        try:
            pid = int(self.pid_file(comp.name).read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        if comp.program not in cmdline or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return None
        if comp.name.startswith("slurmd-") and f"-N {comp.name[len('slurmd-'):]}" not in cmdline:
            return None
        return pid

    def status(self) -> dict[str, Optional[int]]:
        return {c.name: self.pid_of(c) for c in self.components()}

    def running(self) -> bool:
        return any(pid is not None for pid in self.status().values())

    # -- up -----------------------------------------------------------------------------

    def up(self, timeout_s: float = 60.0) -> None:
        if not self.running():
            self._prepare_fresh()
        steps = [
            ("munged", self._start_munged),
            ("slurmctld", self._start_slurmctld),
            *[(f"slurmd-{n}", lambda n=n: self._start_slurmd(n)) for n in NODES],
            ("faas-coscheduler", self._start_coscheduler),
            *[(f"faas-agent-{n}", lambda n=n: self._start_agent(n)) for n in NODES],
        ]
        by_name = {c.name: c for c in self.components()}
        for name, start in steps:
            if self.pid_of(by_name[name]) is None:
                start()
        self._wait_ready(timeout_s)

    def _prepare_fresh(self) -> None:
        """A new cluster: fresh Slurm state, spool and database; new free ports."""
        self.root.mkdir(parents=True, exist_ok=True)
        for parent in self.root.parents:
            if not parent.stat().st_mode & 0o001:
                raise ClusterError(f"munged needs every parent of {self.root} searchable by all users, "
                                   f"and {parent} is not (chmod o+x it, or choose another --dir)")
        # Logs of the previous run stay readable after `down`; a new run starts new ones.
        for sub in ("state", "slurmd", "spool", "agent", "run", "etc", "lib", "log"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for leftover in self.root.glob("faas.db*"):
            leftover.unlink()
        for sub in ("state", "slurmd", "spool", "agent", "run", "etc/plugstack.conf.d", "log", "lib"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        # Private as on a production node: the lend records (spool), the co-scheduler's
        # database, logs and pid files are root's alone; the agents' work directory is only
        # traversed by the functions' owners to their own run directories. Users reach
        # munged's socket, slurm.conf and the plugin (sbatch loads it) and nothing else.
        for sub in ("spool", "state", "run", "log"):
            (self.root / sub).chmod(0o700)
        (self.root / "agent").chmod(0o711)
        # Batch jobs' output files (sbatch --output): every user's, like /tmp (sticky).
        (self.root / "jobs").mkdir(exist_ok=True)
        (self.root / "jobs").chmod(0o1777)
        ports = {"slurmctld": _free_port(), "coscheduler": _free_port(), **{n: _free_port() for n in NODES}}
        self.state_file.unlink(missing_ok=True)
        self.state_file.write_text(json.dumps({"ports": ports, "nodes": list(NODES), "db_url": self.db_url},
                                              indent=1))
        self._render_configs(ports)

    def _render_configs(self, ports: dict) -> None:
        from spank_plugin.plugin_build import build_plugin, plugstack_line

        values = {
            "root": str(self.root), "hostname": socket.gethostname().split(".")[0],
            "slurmctld_port": ports["slurmctld"], "munge_socket": str(self.munge_socket),
            **{f"{n}_port": ports[n] for n in NODES},
        }
        etc = self.root / "etc"
        for name in ("slurm.conf", "plugstack.conf"):
            text = string.Template((TEMPLATES / f"{name}.in").read_text()).substitute(values)
            (etc / name).write_text(text)
        shutil.copy(TEMPLATES / "cgroup.conf", etc / "cgroup.conf")
        so = build_plugin(self.root / "lib")
        # cgroup_root: an empty tree of the cluster's own (task/none confines nothing); the plugin
        # tests put fake job cpusets there (docs/dev-cluster.md).
        (self.root / "cgroup").mkdir(exist_ok=True)
        args = [f"spool={self.spool}", "cpu_map=block", f"node_cpus={NODE_CPUS}", f"cgroup_root={self.root / 'cgroup'}"]
        (etc / "plugstack.conf.d" / "faas.conf").write_text(plugstack_line(so, args) + "\n")

    def _write_pid(self, name: str, pid: int) -> None:
        self.pid_file(name).write_text(f"{pid}\n")

    def _start_munged(self) -> None:
        mdir = self.root / "munge"
        (mdir / "run").mkdir(parents=True, exist_ok=True)
        (mdir / "key").mkdir(parents=True, exist_ok=True)
        mdir.chmod(0o755)
        (mdir / "run").chmod(0o755)  # clients of every user reach the socket
        (mdir / "key").chmod(0o700)
        key = mdir / "key" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket.unlink(missing_ok=True)
        pid_file = mdir / "run" / "munged.pid"
        self._run(["munged", "--socket", str(self.munge_socket), "--key-file", str(key),
                   "--pid-file", str(pid_file), "--log-file", str(self.root / "log" / "munged.log"),
                   "--seed-file", str(mdir / "key" / "munged.seed")], "munged")
        _wait_for("munged", lambda: pid_file.exists(), 10, self.root / "log" / "munged.log")
        shutil.copy(pid_file, self.pid_file("munged"))
        _wait_for("munge", self._munge_works, 10, self.root / "log" / "munged.log")

    def _munge_works(self) -> bool:
        enc = subprocess.run(["munge", "-n", "-S", str(self.munge_socket)], capture_output=True)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge", "-S", str(self.munge_socket)], input=enc.stdout, capture_output=True)
        return dec.returncode == 0

    def _slurm_env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}

    def _run(self, argv: list[str], what: str) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, env=self._slurm_env(), timeout=60)
        if out.returncode != 0:
            raise ClusterError(f"{what} failed to start ({' '.join(argv)}): {out.stderr.strip() or out.stdout.strip()}")

    def _start_slurmctld(self) -> None:
        # -i: ignore state files from an earlier run of this directory (a fresh start wiped them).
        self._run(["slurmctld", "-i", "-f", str(self.slurm_conf)], "slurmctld")
        _wait_for("slurmctld pid file", lambda: (self.root / "run" / "slurmctld.pid").exists(), 15,
                  self.root / "log" / "slurmctld.log")
        _wait_for("slurmctld", self._controller_up, 30, self.root / "log" / "slurmctld.log")

    def _controller_up(self) -> bool:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=self._slurm_env())
        return out.returncode == 0 and "UP" in out.stdout

    def _start_slurmd(self, node: str) -> None:
        self._run(["slurmd", "-N", node, "-f", str(self.slurm_conf)], f"slurmd {node}")
        _wait_for(f"slurmd {node} pid file", lambda: self.pid_file(f"slurmd-{node}").exists(), 15,
                  self.root / "log" / f"slurmd-{node}.log")

    def _spawn_python(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=self._slurm_env(), start_new_session=True,
                                cwd=self.root)
        log.close()
        self._write_pid(name, proc.pid)

    def _start_coscheduler(self) -> None:
        self._spawn_python("faas-coscheduler", [
            "-m", "coscheduler.daemon", "--db", self.db_url, "--bind", self.coscheduler_endpoint,
            "--munge-socket", str(self.munge_socket), "--log-file", str(self.root / "log" / "coscheduler.log"),
            "--reconcile-interval", "2", "--foreground",
        ])

    def _start_agent(self, node: str) -> None:
        self._spawn_python(f"faas-agent-{node}", [
            "-m", "faas_runtime.agent", "--node", node, "--spool", str(self.spool),
            "--coscheduler", self.coscheduler_endpoint, "--workdir", str(self.root / "agent"),
            "--munge-socket", str(self.munge_socket), "--log-file", str(self.root / "log" / f"agent-{node}.log"),
            # The test suite submits as root as well as as an unprivileged user; a site never does.
            "--allow-root-functions", "--keep-warm", "30",
        ])

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                             env=self._slurm_env())
        return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)

    def _wait_ready(self, timeout_s: float) -> None:
        from faas_runtime.queue_client import Client, Unavailable

        def nodes_ready() -> bool:
            states = self.node_states()
            return len(states) == len(NODES) and all(s in ("idle", "alloc", "mix") for s in states.values())

        _wait_for("slurm nodes", nodes_ready, timeout_s, self.root / "log")
        with Client(self.coscheduler_endpoint, str(self.munge_socket), timeout_s=1.0) as client:
            def daemons_answer() -> bool:
                try:
                    return set(client.agents()) >= set(NODES)
                except Unavailable:
                    return False

            _wait_for("faas-coscheduler and agents", daemons_answer, timeout_s, self.root / "log")

    # -- down ---------------------------------------------------------------------------

    def down(self, timeout_s: float = 20.0) -> None:
        status = self.status()
        if status.get("slurmctld"):
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                  env=self._slurm_env()).stdout.split()
            if jobs:
                subprocess.run(["scancel", *jobs], capture_output=True, env=self._slurm_env())
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and subprocess.run(
                        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                        env=self._slurm_env()).stdout.split():
                    time.sleep(0.2)
        # Reverse start order: agents first, munged last (Slurm needs it to shut down cleanly).
        for comp in reversed(self.components()):
            pid = self.pid_of(comp)
            if pid is not None:
                _terminate(pid, timeout_s / 2)
            self.pid_file(comp.name).unlink(missing_ok=True)
        self._kill_leftover_stepds()

    def _kill_leftover_stepds(self) -> None:
        """slurmstepd processes of this cluster that outlived their slurmd."""
        marker = str(self.root)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                environ = (proc / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("slurmstepd") and marker in environ:
                _terminate(int(proc.name), 5)


def _terminate(pid: int, timeout_s: float) -> None:
    """TERM, wait on a monotonic deadline, then KILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
