"""A real local Slurm cluster with slurm-faas, for development, the demo and the tests.

munged (own key and socket), MariaDB and slurmdbd (real accounting: ``sacct``; left
out, with ``accounting_storage/none``, where Debian's mariadb-server or slurmdbd is not
installed), slurmctld, three slurmd (``slurmd -N n1..n3`` on 127.0.0.1, or with ``netns``
each node in a network namespace of its own at its own address, devcluster_netns; each declaring
8 CPUs and 16 GB), the faas SPANK plugin through plugstack.conf.d, one faas-coscheduler
(SQLite; ``coscheduler_config``: a TOML file it reads) and one faas-agent per node. Everything
(state, logs, sockets, pid files, the database) lives under one directory, and the ports
are chosen free at ``up``, so clusters in different directories never collide.

``up`` is idempotent: with nothing running it starts a fresh cluster; otherwise it
starts only the components that are not running. ``down`` cancels jobs first (their
steps outlive slurmd) and then stops every daemon by its pid file, TERM then KILL.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .devcluster_netns import NodeNetwork, remove_leftovers
from .devcluster_procs import ClusterError, free_port as _free_port, terminate as _terminate, wait_for as _wait_for

NODES = ("n1", "n2", "n3")
NODE_CPUS = 8
TEMPLATES = Path(__file__).resolve().parents[2] / "slurm.conf.d" / "dev-cluster"
# Not under a home directory: /root is 0700, and munged wants every parent of its socket
# searchable by all users. /var/tmp outlives a reboot's /tmp cleaning, as a cluster's state should.
DEFAULT_DIR = Path(os.environ.get("FAAS_DEV_CLUSTER_DIR", "/var/tmp/slurm-faas-dev-cluster"))


@dataclass(frozen=True)
class Component:
    name: str
    program: str  # what /proc/PID/cmdline must mention (guards against reused pids)


def accounting_available() -> bool:
    """Debian's mariadb-server and slurmdbd are installed (make deps)."""
    return all(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") for t in
               ("mariadbd", "mariadb-install-db", "slurmdbd", "sacctmgr"))


class DevCluster:
    def __init__(self, root: Path = DEFAULT_DIR, db_url: Optional[str] = None,
                 accounting: Optional[bool] = None, netns: bool = False):
        """``db_url``: the co-scheduler's database for a new cluster (default: SQLite in
        ``root``); a running cluster keeps the one it was started with. ``accounting``:
        run MariaDB + slurmdbd (default: when installed). ``netns``: a new cluster puts each
        node in a network namespace of its own (docs/dev-cluster.md); a running cluster
        keeps the layout it was started with."""
        self.root = Path(root).resolve()
        self.state_file = self.root / "cluster.json"
        self._db_url = db_url
        self._accounting = accounting_available() if accounting is None else accounting
        self._netns = netns

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
    def coscheduler_config(self) -> Path:
        """The co-scheduler's TOML configuration (docs/admin.md); empty unless a test or a
        developer writes one (``restart_coscheduler(config=...)``)."""
        return self.root / "etc" / "coscheduler.toml"

    @property
    def accounting(self) -> bool:
        """This cluster runs slurmdbd (so ``sacct`` works)."""
        try:
            return bool(json.loads(self.state_file.read_text()).get("accounting"))
        except (OSError, ValueError):
            return self._accounting

    @property
    def db_url(self) -> str:
        try:
            return json.loads(self.state_file.read_text())["db_url"]
        except (OSError, ValueError, KeyError):
            return self._db_url or f"sqlite:///{self.root / 'faas.db'}"

    @property
    def network(self) -> Optional[NodeNetwork]:
        """The nodes' namespaces, when this cluster runs with ``netns`` (else None)."""
        try:
            state = json.loads(self.state_file.read_text()).get("netns")
        except (OSError, ValueError):
            return None
        return NodeNetwork.from_state(state) if state else None

    @property
    def head_address(self) -> str:
        """Where slurmctld and the co-scheduler are reached from the nodes and clients."""
        network = self.network
        return network.head_address if network else "127.0.0.1"

    def node_address(self, node: str) -> str:
        network = self.network
        return network.address(node) if network else "127.0.0.1"

    def _in_node(self, node: str) -> list[str]:
        """The argv prefix that runs a program on ``node`` (its namespace, with netns)."""
        network = self.network
        return network.enter(node) if network else []

    def components(self) -> list[Component]:
        dbd = [Component("mariadb", "mariadbd"), Component("slurmdbd", "slurmdbd")] if self.accounting else []
        return (
            [Component("munged", "munged"), *dbd, Component("slurmctld", "slurmctld")]
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
        return f"tcp://{self.head_address}:{self.ports()['coscheduler']}"

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
        network = self.network
        if network is not None and not network.exists():  # fresh, or removed under a running cluster
            network.remove()
            network.create()
        dbd = [("mariadb", self._start_mariadb), ("slurmdbd", self._start_slurmdbd)] if self.accounting else []
        steps = [
            ("munged", self._start_munged),
            *dbd,
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
        for sub in ("state", "slurmd", "spool", "agent", "run", "etc", "lib", "log", "mariadb"):
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
        ports = {"slurmctld": _free_port(), "coscheduler": _free_port(), **{n: _free_port() for n in NODES},
                 "slurmdbd": _free_port(), "mariadb": _free_port()}
        accounting, db_url = self._accounting, self.db_url
        self.state_file.unlink(missing_ok=True)
        remove_leftovers(NodeNetwork.tag_of(self.root))  # a crashed earlier run of this directory
        network = NodeNetwork.plan(self.root, NODES) if self._netns else None
        self.state_file.write_text(json.dumps({"ports": ports, "nodes": list(NODES), "db_url": db_url,
                                               "accounting": accounting,
                                               "netns": network.state() if network else None}, indent=1))
        self._render_configs(ports)

    def _render_configs(self, ports: dict) -> None:
        from spank_plugin.plugin_build import build_plugin, plugstack_line

        if self.accounting:
            # AccountingStoragePass: with munge, the socket the clients and slurmctld use towards slurmdbd
            accounting = (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
                          f"AccountingStoragePort={ports['slurmdbd']}\nAccountingStoragePass={self.munge_socket}")
        else:
            accounting = "AccountingStorageType=accounting_storage/none"
        values = {
            "root": str(self.root), "hostname": socket.gethostname().split(".")[0],
            "slurmctld_port": ports["slurmctld"], "munge_socket": str(self.munge_socket),
            "head_address": self.head_address, **{f"{n}_address": self.node_address(n) for n in NODES},
            **{f"{n}_port": ports[n] for n in NODES}, "accounting": accounting,
            "slurmdbd_port": ports["slurmdbd"], "mariadb_port": ports["mariadb"],
            "storage_pass": os.urandom(12).hex(),
            # distinct per cluster directory (shared cgroup tree; see slurm.conf.in)
            "first_job_id": 1000 + int.from_bytes(hashlib.sha1(str(self.root).encode()).digest()[:4], "big") % 50_000_000,
        }
        etc = self.root / "etc"
        for name in ("slurm.conf", "plugstack.conf", "slurmdbd.conf"):
            text = string.Template((TEMPLATES / f"{name}.in").read_text()).substitute(values)
            fd = os.open(etc / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name == "slurmdbd.conf" else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        self.coscheduler_config.write_text("# the dev cluster's co-scheduler configuration (docs/admin.md)\n")
        shutil.copy(TEMPLATES / "cgroup.conf", etc / "cgroup.conf")
        so = build_plugin(self.root / "lib")
        # cgroup_root: an empty tree of the cluster's own. task/cgroup confines jobs for real
        # (/sys/fs/cgroup), but the nodes declare 8 CPUs on this 2-CPU machine, so a job's real
        # cpuset is the whole machine and says nothing about its cores; the plugin tests put
        # fake job cpusets here instead (docs/dev-cluster.md).
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

    # -- accounting: MariaDB (its own data directory, loopback TCP) and slurmdbd ----------

    def _storage(self) -> dict[str, str]:
        conf = (self.root / "etc" / "slurmdbd.conf").read_text()
        return dict(line.split("=", 1) for line in conf.splitlines() if line.startswith("Storage"))

    def _mariadb(self, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mariadb", "--no-defaults", "-S", str(self.root / "mariadb" / "mysqld.sock"),
                               "-u", "root", "-e", sql], capture_output=True, text=True, timeout=30)

    def _start_mariadb(self) -> None:
        mdir, data = self.root / "mariadb", self.root / "mariadb" / "data"
        log = self.root / "log" / "mariadb.log"
        mdir.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(mdir, "mysql", "mysql")
        fresh = not data.exists()
        if fresh:
            out = subprocess.run(["runuser", "-u", "mysql", "--", "mariadb-install-db", "--no-defaults",
                                  f"--datadir={data}", "--auth-root-authentication-method=socket",
                                  "--skip-test-db"], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise ClusterError(f"mariadb-install-db failed: {out.stderr.strip() or out.stdout.strip()}")
        log.touch()
        shutil.chown(log, "mysql")
        pid_file = mdir / "mysqld.pid"
        pid_file.unlink(missing_ok=True)
        # root over the Unix socket (unix_socket auth) sets up; slurmdbd comes over loopback TCP.
        subprocess.Popen(["runuser", "-u", "mysql", "--", "mariadbd", "--no-defaults", f"--datadir={data}",
                          f"--socket={mdir / 'mysqld.sock'}", "--bind-address=127.0.0.1",
                          f"--port={self.ports()['mariadb']}", f"--pid-file={pid_file}", f"--log-error={log}",
                          "--innodb-buffer-pool-size=256M", "--innodb-lock-wait-timeout=900", "--skip-name-resolve"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        _wait_for("mariadb", lambda: pid_file.exists() and self._mariadb("SELECT 1").returncode == 0, 60, log)
        shutil.copy(pid_file, self.pid_file("mariadb"))
        if fresh:
            st = self._storage()
            user, pw, db = st["StorageUser"], st["StoragePass"], st["StorageLoc"]
            out = self._mariadb(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'; "
                                f"GRANT ALL ON `{db}`.* TO '{user}'@'127.0.0.1';")
            if out.returncode != 0:
                raise ClusterError(f"cannot create the accounting database user: {out.stderr.strip()}")

    def _start_slurmdbd(self) -> None:
        log = self.root / "log" / "slurmdbd.log"
        self._run(["slurmdbd"], "slurmdbd")
        _wait_for("slurmdbd", lambda: self.pid_file("slurmdbd").exists() and subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], capture_output=True,
            env=self._slurm_env()).returncode == 0, 60, log)
        listed = subprocess.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], capture_output=True,
                                text=True, env=self._slurm_env()).stdout.split()
        if "faasdev" not in listed:
            out = subprocess.run(["sacctmgr", "-i", "add", "cluster", "faasdev"], capture_output=True, text=True,
                                 env=self._slurm_env())
            if out.returncode != 0:
                raise ClusterError(f"sacctmgr add cluster failed: {out.stderr.strip() or out.stdout.strip()}")

    def restart_coscheduler(self, config: Optional[str] = None, timeout_s: float = 60.0) -> None:
        """Stop the co-scheduler and start it again, reading ``config`` (TOML text; None:
        an empty file, the defaults). Agents say HELLO again; held work is adopted."""
        comp = next(c for c in self.components() if c.name == "faas-coscheduler")
        pid = self.pid_of(comp)
        if pid is not None:
            _terminate(pid, timeout_s / 2)
        self.coscheduler_config.write_text(config or "")
        self._start_coscheduler()
        self._wait_ready(timeout_s)

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
        self._run([*self._in_node(node), "slurmd", "-N", node, "-f", str(self.slurm_conf)], f"slurmd {node}")
        _wait_for(f"slurmd {node} pid file", lambda: self.pid_file(f"slurmd-{node}").exists(), 15,
                  self.root / "log" / f"slurmd-{node}.log")

    def _spawn_python(self, name: str, argv: list[str], enter: tuple[str, ...] = ()) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen([*enter, sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=self._slurm_env(), start_new_session=True,
                                cwd=self.root)
        log.close()
        self._write_pid(name, proc.pid)

    def _start_coscheduler(self) -> None:
        self._spawn_python("faas-coscheduler", [
            "-m", "coscheduler.daemon", "--config", str(self.coscheduler_config),
            "--db", self.db_url, "--bind", self.coscheduler_endpoint,
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
        ], enter=tuple(self._in_node(node)))  # its hot-path address: derived from the route to the co-scheduler

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
        remove_leftovers(NodeNetwork.tag_of(self.root))  # the nodes' namespaces, veths and bridge

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

