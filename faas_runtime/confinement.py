"""Confinement of executors: one cgroup each, under the agent's subtree; cgroup v1 and v2.

Every executor gets its own cgroup, created before it starts and joined by the child
itself before it drops to the function owner's uid and execs (so not one instruction of
user code runs outside it):

    cpuset   the lent OS CPUs (and the parent's memory nodes)
    memory   the function's memory; no swap; the kernel OOM-kills inside the cgroup only
    cpu      a low weight (shares / weight), so the batch job wins any contention
    pids     a limit, so a fork bomb stops there

The agent's subtree is ``<the agent's own cgroup>/<name>`` in each hierarchy (v1: per
controller; v2: one unified tree, with the controllers enabled in ``subtree_control``).
Ending an executor kills every process of its cgroup (``cgroup.kill`` on v2, a kill loop
over ``cgroup.procs`` on v1) and removes the cgroup; a restarted agent does the same to
the executor cgroups a crash left behind (``Subtree.reap_orphans``).

The classes only read and write files below a root directory, so unit tests run them on
a fake tree; the integration tests use the real ``/sys/fs/cgroup``.

Owns: cgroups (v1, v2) of executors, and starting a process in one as a user. May not touch: sockets, what runs inside.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger("faas.confinement")

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpuset", "memory", "cpu", "pids")
V2_CONTROLLERS = ("cpuset", "memory", "cpu", "pids")


class ConfinementError(Exception):
    """A cgroup could not be created or configured."""


@dataclass(frozen=True)
class Limits:
    cpus: tuple[int, ...]
    mem_mb: int
    pids_max: int = 512
    cpu_weight: int = 10  # v2 weight (1..10000, default 100); v1 shares = weight * 1024 / 100


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(set(cpus)))


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: Path) -> str:
    with open(path) as fh:
        return fh.read()


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``memory.events``, ``memory.oom_control``)."""
    try:
        text = _read(path)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def own_cgroups(proc_self: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """controller (or '' for v2) -> this process' cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in _read(proc_self).splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            out[c] = path
    return out


class ExecutorCgroup:
    """The cgroup(s) of one executor: one directory per v1 controller, one on v2."""

    def __init__(self, version: int, dirs: dict[str, Path]):
        self.version = version
        self.dirs = dirs  # controller -> directory ('' -> the v2 directory)
        self._procs_files = [str(d / "cgroup.procs") for d in dict.fromkeys(dirs.values())]

    @property
    def name(self) -> str:
        return next(iter(self.dirs.values())).name

    def join_self(self) -> None:
        """Move the calling process here. Runs in the forked child before exec: no logging."""
        pid = str(os.getpid())
        for f in self._procs_files:
            fd = os.open(f, os.O_WRONLY)
            try:
                os.write(fd, pid.encode())
            finally:
                os.close(fd)

    def _membership_dir(self) -> Path:
        return self.dirs.get("pids") or self.dirs.get("") or next(iter(self.dirs.values()))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(self._membership_dir() / "cgroup.procs").split()]
        except OSError:
            return []

    def oom_kills(self) -> int:
        if self.version == 2:
            return _keyed(self.dirs[""] / "memory.events").get("oom_kill", 0)
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        counters = _keyed(mem / "memory.oom_control")
        if "oom_kill" in counters:
            return counters["oom_kill"]
        try:  # kernels before 4.13 lack the counter: hitting the limit is the best sign there is
            return int(_read(mem / "memory.failcnt").strip() or 0)
        except (OSError, ValueError):
            return 0

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; True when it is."""
        kill_file = self.dirs.get("", Path("/nonexistent")) / "cgroup.kill"
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            if self.version == 2 and kill_file.exists():
                try:
                    _write(kill_file, "1")
                except OSError:
                    self.signal(signal.SIGKILL)
            else:
                self.signal(signal.SIGKILL)  # a fork bomb is bounded by pids.max: this converges
            if time.monotonic() > deadline:
                log.warning("cgroup %s still holds %s after %g s", self.name, pids, timeout_s)
                return False
            time.sleep(0.005)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left and remove the directories (children first, then ours)."""
        self.kill(timeout_s)
        ok = True
        for d in dict.fromkeys(self.dirs.values()):
            deadline = time.monotonic() + timeout_s
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOTDIR or time.monotonic() > deadline:
                        log.warning("could not remove cgroup %s: %s", d, exc)
                        ok = False
                        break
                    time.sleep(0.01)  # zombies still leaving
        return ok


class Subtree:
    """The agent's part of the cgroup tree; makes and finds executor cgroups."""

    def __init__(self, name: str, root: Path = CGROUP_ROOT, version: Optional[int] = None,
                 own: Optional[dict[str, str]] = None):
        self.root = Path(root)
        self.version = version or detect_version(self.root)
        own = own_cgroups() if own is None else own
        self.base: dict[str, Path] = {}
        if self.version == 1:
            for c in V1_CONTROLLERS:
                mount = self.root / c
                if not (mount / "cgroup.procs").exists():
                    raise ConfinementError(f"cgroup v1 controller {c} is not mounted at {mount}")
                self.base[c] = mount / own.get(c, "/").lstrip("/") / name
        else:
            parent = self.root / own.get("", "/").lstrip("/")
            self.base[""] = parent / name
        self._setup()

    # -- the subtree itself ---------------------------------------------------------------

    def _setup(self) -> None:
        try:
            if self.version == 1:
                for c, d in self.base.items():
                    d.mkdir(parents=True, exist_ok=True)
                    if c == "cpuset":
                        for key in ("cpuset.cpus", "cpuset.mems"):
                            if not (d / key).exists() or not _read(d / key).strip():
                                _write(d / key, _read(d.parent / key).strip())
                    if c == "memory" and (d / "memory.use_hierarchy").exists():
                        try:
                            _write(d / "memory.use_hierarchy", "1")
                        except OSError:
                            pass  # already inherited, or children exist
            else:
                d = self.base[""]
                _enable_v2_controllers(d.parent)
                d.mkdir(parents=True, exist_ok=True)
                _enable_v2_controllers(d, move_self=False)
        except OSError as exc:
            raise ConfinementError(f"cannot set up the agent's cgroup subtree {self.base}: {exc}") from None

    def executor_dirs(self, name: str) -> dict[str, Path]:
        return {c: d / name for c, d in self.base.items()}

    def create(self, name: str, limits: Limits) -> ExecutorCgroup:
        if not all(d.is_dir() for d in self.base.values()):
            self._setup()  # someone removed the (empty) subtree: make it again
        dirs = self.executor_dirs(name)
        cg = ExecutorCgroup(self.version, dirs)
        try:
            for d in dict.fromkeys(dirs.values()):
                d.mkdir(exist_ok=True)
            cpus = format_cpus(limits.cpus)
            mem = str(limits.mem_mb * 1024 * 1024)
            if self.version == 1:
                _write(dirs["cpuset"] / "cpuset.mems", _read(self.base["cpuset"] / "cpuset.mems").strip())
                _write(dirs["cpuset"] / "cpuset.cpus", cpus)
                _write(dirs["memory"] / "memory.limit_in_bytes", mem)
                for key, value in (("memory.memsw.limit_in_bytes", mem), ("memory.swappiness", "0")):
                    if (dirs["memory"] / key).exists():
                        try:
                            _write(dirs["memory"] / key, value)
                        except OSError:
                            pass  # no swap accounting: the memory limit alone holds
                _write(dirs["cpu"] / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
                _write(dirs["pids"] / "pids.max", str(limits.pids_max))
            else:
                d = dirs[""]
                _write(d / "cpuset.cpus", cpus)
                _write(d / "memory.max", mem)
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
                if (d / "memory.oom.group").exists():
                    _write(d / "memory.oom.group", "0")  # kill the offender, not the executor's peers
                _write(d / "cpu.weight", str(max(1, min(10000, limits.cpu_weight))))
                _write(d / "pids.max", str(limits.pids_max))
        except OSError as exc:
            cg.remove(timeout_s=1)
            raise ConfinementError(f"cannot configure cgroup {name}: {exc}") from None
        return cg

    def existing(self) -> list[ExecutorCgroup]:
        first = next(iter(self.base.values()))
        try:
            names = sorted(p.name for p in first.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        return [ExecutorCgroup(self.version, self.executor_dirs(n)) for n in names]

    def remove(self) -> None:
        """Remove the subtree itself once it holds no executor (an agent that stops cleanly)."""
        if self.existing():
            return
        for d in self.base.values():
            try:
                d.rmdir()
            except OSError:
                pass  # busy or already gone: the next agent of this name reuses it

    def reap_orphans(self) -> int:
        """Kill and remove every executor cgroup here (left by a crashed agent)."""
        found = self.existing()
        for cg in found:
            log.warning("killing the executors a previous agent left in cgroup %s (%d processes)",
                        cg.name, len(cg.pids()))
            cg.remove()
        return len(found)


def detect_version(root: Path = CGROUP_ROOT) -> int:
    """2 on a pure unified hierarchy with controllers, else 1 (hybrid and legacy hosts)."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "cpuset" / "cgroup.procs").exists():
        return 1
    raise ConfinementError(f"no usable cgroup hierarchy at {root}")


def _enable_v2_controllers(d: Path, move_self: bool = True) -> None:
    """Enable the controllers for ``d``'s children (moving this process into a leaf first
    when ``d`` holds processes, which v2's no-internal-process rule forbids)."""
    wanted = [c for c in V2_CONTROLLERS if c in _read(d / "cgroup.controllers").split()]
    missing = set(V2_CONTROLLERS) - set(wanted)
    if missing:
        raise ConfinementError(f"cgroup v2 controllers {sorted(missing)} are not delegated to {d}")
    enabled = set(_read(d / "cgroup.subtree_control").split())
    todo = [c for c in wanted if c not in enabled]
    if not todo:
        return
    if move_self and _read(d / "cgroup.procs").split():
        leaf = d / "agent"
        leaf.mkdir(exist_ok=True)
        for pid in _read(d / "cgroup.procs").split():
            try:
                _write(leaf / "cgroup.procs", pid)
            except OSError:
                pass
    _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))


@dataclass(frozen=True)
class Identity:
    """Who an executor runs as: never root unless the agent was told to allow it."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def spawn(argv: list[str], *, env: dict[str, str], cwd: str, cgroup: Optional[ExecutorCgroup],
          identity: Optional[Identity], stdout, allow_root: bool = False):
    """Start ``argv`` inside ``cgroup`` as ``identity`` (a new session); return the Popen.

    The child joins the cgroup, then sets its groups, gid and uid, then execs: the order
    matters (only root may join a cgroup it does not own, and nothing may run before the
    cgroup holds it). ``identity=None`` keeps the agent's own uid (an unprivileged agent
    running its own functions).
    """
    import subprocess

    if identity is not None and identity.uid == 0 and not allow_root:
        raise ConfinementError("functions never run as root (uid 0); submit them as an ordinary user")
    if identity is not None and os.geteuid() != 0 and identity.uid != os.geteuid():
        raise ConfinementError(f"this agent runs as uid {os.geteuid()} and cannot run functions of uid {identity.uid}")

    def in_child() -> None:  # after fork, before exec: no locks, no logging, no allocation-heavy work
        if cgroup is not None:
            cgroup.join_self()
        if identity is not None and os.geteuid() == 0:
            os.setgroups(list(identity.groups))
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)

    return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                            preexec_fn=in_child)
