"""Executor management of the node agent: the warm executor processes and the agent's side
of their control sockets.

Owns: spawning an executor (the function owner's identity from this node's user database,
``user_identity``; the container argv, ``faas_runtime.containers``; its cgroup below the
agent's subtree with the slot's lent CPUs, ``faas_runtime.confinement``; its run directory
and the output file the agent reads by descriptor only; the control socket in a directory
of root's), calls over that socket and the executors' replies (an invocation's RESULT; the
OK to a lease's GRANT, which becomes LEASE_READY), stopping (SIGTERM, SIGKILL after the
grace), reaping and retiring (the final report of the invocation an executor held, the end
of its lease, its cgroup and directories removed), and the records ``Executor`` and
``Running``.

May not touch: the co-scheduler's socket (it reports only through the agent's ``send`` and
``report``), the spool and the slots (it reads a slot's lend record, never changes it), the
waiting queue (cores an executor frees go to ``_start_waiting``, faas_runtime.invocations),
or a lease's terms (faas_runtime.hot_leases). ``ExecutorPool`` is mixed into
``faas_runtime.agent.Agent``, which holds the state named in its class body.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import zmq

from . import as_user
from . import protocol as P
from .confinement import ConfinementError, ExecutorCgroup, Identity, Limits, Subtree, spawn
from .containers import Bind, ContainerError, RunSpec, build_argv, check_image, program
from .images import CODE_DIR, CTL_DIR, LIB_DIR, RUN_DIR, RUNTIME_PACKAGES

if TYPE_CHECKING:
    from .agent import Slot

log = logging.getLogger("faas.agent")

CONTROL_SOCKET = "control.sock"
EXECUTOR_READY_TIMEOUT_S = 30.0
# After a result, an executor's cgroup is read for processes the function left behind (a fresh
# executor then): at most this often while calls run back to back, and always when it goes idle.
PROCS_CHECK_S = 0.05
IMAGE_PYTHON = "/usr/bin/python3"  # the interpreter inside images, by absolute path


@dataclass
class Executor:
    """One warm executor process (in its container and cgroup) and the agent's socket to it."""

    name: str
    key: tuple
    slot_id: str
    proc: subprocess.Popen
    cgroup: Optional[ExecutorCgroup]
    run_dir: Path
    ctl_dir: Path  # root's: holds the control socket the agent bound (never a path the owner controls)
    sock: zmq.Socket
    output_fd: int  # the agent's own descriptor of the executor's output.log (read by fd, never by path)
    mem_mb: int
    started_at: float  # monotonic
    ready: bool = False  # the executor connected and said so (with its hot endpoint)
    hot_endpoint: Optional[str] = None
    pending: list = field(default_factory=list)  # frames for the executor until it is ready
    function_id: Optional[int] = None
    idle_since: float = 0.0
    busy: Optional[int] = None  # invocation id
    # Invocations sent ahead (faas_runtime.invocations), in the order it runs them:
    # invocation id -> (RUN message, lent cores: those of the one running, monotonic time sent)
    ahead: dict = field(default_factory=dict)
    procs_checked: float = 0.0  # monotonic; when its cgroup was last looked at for processes left behind
    lease_id: Optional[str] = None
    lease_token: Optional[str] = None
    lease_expires: Optional[float] = None  # monotonic
    lease_ready: bool = False
    kill_at: Optional[float] = None  # monotonic; set once SIGTERM was sent
    stop_reason: Optional[str] = None

    @property
    def stopping(self) -> bool:
        return self.kill_at is not None

    @property
    def idle(self) -> bool:
        return self.busy is None and self.lease_id is None and not self.stopping


@dataclass
class Running:
    """One invocation running on an executor (faas_runtime.invocations starts it)."""

    invocation_id: int
    attempt: int
    slot_id: str
    executor: Executor
    deadline: float  # monotonic
    started: float  # monotonic (for one sent ahead: when the one before it ended)
    cores: frozenset[int] = frozenset()  # the lent Slurm cores it holds
    reason: Optional[str] = None  # why it is being stopped (None: it runs normally)
    sent: float = 0.0  # monotonic: when its CALL went to the executor (run_s is never more than since)


def runtime_packages() -> dict[str, str]:
    """Host directories of the packages an executor imports: bound into images, or on
    PYTHONPATH without a container."""
    import msgpack

    found = {"faas_runtime": str(Path(__file__).resolve().parent),
             "zmq": str(Path(zmq.__file__).resolve().parent),
             "msgpack": str(Path(msgpack.__file__).resolve().parent)}
    libs = Path(found["zmq"]).parent / "pyzmq.libs"
    if libs.is_dir():
        found["pyzmq.libs"] = str(libs)
    try:  # pure Python; the Python API's by-value calls need it (faas_runtime.pyapi)
        import cloudpickle

        found["cloudpickle"] = str(Path(cloudpickle.__file__).resolve().parent)
    except ImportError:
        pass
    assert set(found) <= set(RUNTIME_PACKAGES)
    return found


def runtime_lib_dir(lib: Path, packages: dict[str, str]) -> Path:
    """A directory of root's holding links to the executor's packages only: what
    PYTHONPATH names for functions run without a container."""
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(mode=0o755)
    for name, src in packages.items():
        (lib / name).symlink_to(src, target_is_directory=True)
    return lib


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(fd: int, limit: int = 500) -> str:
    """The end of an executor's output, read through the agent's own descriptor."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit)).decode(errors="replace").strip()
    except OSError:
        return ""


def user_identity(uid: int, node: str) -> tuple[Identity, pwd.struct_passwd]:
    """Who a function of ``uid`` runs as: its primary group and supplementary groups from
    this node's user database (as initgroups does), never what a message claims."""
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        raise ConfinementError(f"uid {uid} has no account on node {node}") from None
    return Identity(uid, account.pw_gid, tuple(os.getgrouplist(account.pw_name, account.pw_gid))), account


class ExecutorPool:
    """The executors of one agent (mixed into ``Agent``, whose fields and methods below it uses)."""

    node: str
    workdir: Path
    grace_s: float
    keep_warm_s: float
    host_python: str
    container_runtime: str
    hot_host: str
    cgroups: bool
    cgroup_name: Optional[str]
    pids_max: int
    cpu_weight: int
    allow_root: bool
    ctx: zmq.Context
    poller: zmq.Poller
    executors: dict[str, Executor]
    running: dict[int, Running]
    # and: send(), report() (faas_runtime.agent), _start_waiting() (faas_runtime.invocations),
    # _lease_tick() (faas_runtime.hot_leases)

    def _init_executors(self) -> None:
        """The work directory (run and control directories, what a previous agent left
        removed) and the cgroup subtree (its orphans killed)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o711)  # the executors' owners traverse to their run dirs, nothing more
        self.exec_root = self.workdir / "exec"  # run dirs: one per executor, its owner's
        self.ctl_root = self.workdir / "ctl"  # control sockets: root's directories, owner's socket
        for d in (self.exec_root, self.ctl_root):
            shutil.rmtree(d, ignore_errors=True)  # what a previous agent left
            d.mkdir(mode=0o711)
        self._names = itertools.count(1)
        self.packages = runtime_packages()
        self.lib_dir = runtime_lib_dir(self.workdir / "lib", self.packages)
        self.subtree: Optional[Subtree] = None
        if self.cgroups:
            # Stable across restarts (so orphans are found), distinct per agent on one host.
            digest = hashlib.sha1(str(self.workdir.resolve()).encode()).hexdigest()[:8]
            name = self.cgroup_name or f"slurm-faas-{self.node}-{digest}"
            self.subtree = Subtree(name)
            self.subtree.reap_orphans()

    def _executor_key(self, msg: dict, slot: Slot) -> tuple:
        """What an executor that may run ``msg`` has in common with it."""
        image = msg.get("image") or None
        runtime = msg.get("runtime") or (self.container_runtime if image else "none")
        # The group is never the sender's to choose: _spawn_executor takes it from the user database.
        # The version (the function's last change) is part of the key: a re-registered
        # function never runs on an executor that imported its old code.
        return (slot.slot_id, int(msg["uid"]), msg["entrypoint"], msg["code_dir"], image, runtime, int(msg["mem_mb"]),
                str(msg.get("version") or ""))

    def _executor_for(self, msg: dict, slot: Slot) -> Executor:
        """An idle warm executor of this function on this slot, or a new one (cold start)."""
        key = self._executor_key(msg, slot)
        for ex in self.executors.values():
            if ex.key == key and ex.idle:
                return ex
        fn_id = msg.get("function_id")
        for ex in list(self.executors.values()):
            if ex.idle and fn_id is not None and ex.function_id == fn_id and ex.key[-1] != key[-1]:
                self._stop(ex, "the function was changed (re-registered or updated)")
        ex = self._spawn_executor(key, slot)
        ex.function_id = fn_id
        return ex

    def _spawn_executor(self, key: tuple, slot: Slot, module: str = "faas_runtime.executor",
                        args: Optional[tuple] = None) -> Executor:
        """``module``/``args``: another program of ours speaking the executor's control
        protocol (faas_runtime.memory_lease: ``args`` replace --entrypoint and --code)."""
        slot_id, uid, entrypoint, code_dir, image, runtime, mem_mb, _version = key
        found = program(runtime)  # ContainerError: unknown or missing runtime
        identity, account = user_identity(uid, self.node)  # ConfinementError: no such user here
        problem = as_user.call_as(uid, check_image, runtime, image) if runtime != "none" else None
        if problem is not None:  # looked at as the function's owner: root never opens their path
            raise ContainerError(problem)
        gid = identity.gid
        name = f"e{next(self._names)}-{secrets.token_hex(3)}"
        run_dir = self.exec_root / name
        run_dir.mkdir(mode=0o700)
        # Opened by root while the directory is still root's (O_EXCL, O_NOFOLLOW), and later
        # read through this descriptor only: the function may replace the name with a link.
        output_fd = os.open(run_dir / "output.log", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o600)
        ctl_dir = self.ctl_root / name
        if uid != os.geteuid():
            os.fchown(output_fd, uid, gid)
            os.chown(run_dir, uid, gid)  # the owner's alone: cwd and log, nothing for others
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": account.pw_dir, "USER": account.pw_name,
               "LOGNAME": account.pw_name, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "SLURM_FAAS_JOB_ID": str(slot.job_id), "SLURM_FAAS_SLOT": slot_id}
        if runtime == "none":
            # Only the executor's own packages, never the agent's whole environment: a
            # function imports what its code directory (or image) brings (docs/functions.md).
            env["PYTHONPATH"] = str(self.lib_dir)
            python, code, rdir, ctl, binds = self.host_python, code_dir, str(run_dir), str(ctl_dir), ()
        else:
            env["PYTHONPATH"] = LIB_DIR
            python, code, rdir, ctl = IMAGE_PYTHON, CODE_DIR, RUN_DIR, CTL_DIR
            binds = (Bind(code_dir, CODE_DIR), Bind(str(run_dir), RUN_DIR, read_only=False),
                     Bind(str(ctl_dir), CTL_DIR, read_only=False),
                     *(Bind(src, f"{LIB_DIR}/{pkg}") for pkg, src in self.packages.items()))
        spec = RunSpec(image=image, argv=(python, "-m", module,
                                          *(("--entrypoint", entrypoint, "--code", code) if args is None else args),
                                          "--run-dir", rdir, "--hot-host", self.hot_host,
                                          "--control", f"ipc://{ctl}/{CONTROL_SOCKET}"),
                       binds=binds, env=env, workdir=rdir, cpus=tuple(slot.record["os_cpus"]), mem_mb=mem_mb)
        argv = build_argv(runtime, spec, found or None)
        # The runtime's own process gets a minimal environment; the container gets spec.env.
        host_env = env if runtime == "none" else {k: env[k] for k in ("PATH", "HOME", "USER", "LOGNAME", "LANG")}
        cgroup = sock = None
        try:
            sock = self._control_socket(ctl_dir, uid, gid)
            if self.subtree is not None:
                cgroup = self.subtree.create(name, Limits(tuple(sorted(set(slot.record["os_cpus"]))), mem_mb,
                                                          self.pids_max, self.cpu_weight))
            proc = spawn(argv, env=host_env, cwd=str(run_dir), cgroup=cgroup,
                         identity=identity if (uid != os.geteuid() or uid == 0) else None,
                         stdout=output_fd, allow_root=self.allow_root)
        except BaseException:
            if sock is not None:
                sock.close()
            if cgroup is not None:
                cgroup.remove(timeout_s=1)
            os.close(output_fd)
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(ctl_dir, ignore_errors=True)
            raise
        self.poller.register(sock, zmq.POLLIN)
        ex = Executor(name, key, slot_id, proc, cgroup, run_dir, ctl_dir, sock, output_fd, mem_mb, time.monotonic())
        self.executors[name] = ex
        log.info("executor %s for %s on %s (%s%s, uid %d, pid %d)", name, entrypoint, slot_id, runtime,
                 f" {image}" if image else "", uid, proc.pid)
        return ex

    def _control_socket(self, ctl_dir: Path, uid: int, gid: int) -> zmq.Socket:
        """Bind the executor's control socket in a directory of root's and give the socket
        file (only) to the function's owner: root never connects to, follows or reads a
        path the owner can replace, and no other user can connect."""
        ctl_dir.mkdir(mode=0o711)
        sock = P.configure(self.ctx.socket(zmq.DEALER))
        path = ctl_dir / CONTROL_SOCKET
        sock.bind(f"ipc://{path}")
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, 0o600)
        return sock

    def _call(self, ex: Executor, msg_type: str, **fields) -> None:
        frame = P.encode(msg_type, **fields)
        if not ex.ready:
            ex.pending.append(frame)  # sent once the executor has connected (cold start)
            return
        self._send_frame(ex, frame)

    def _send_frame(self, ex: Executor, frame: bytes) -> None:
        try:
            ex.sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._stop(ex, "executor does not read its socket")

    def step_executors(self, ready: Optional[dict] = None) -> None:
        """Replies of the executors (``ready``: only those whose socket the poll found readable)."""
        for ex in list(self.executors.values()):
            if ready is None or ex.sock in ready:
                self._drain_executor(ex)

    def _drain_executor(self, ex: Executor) -> None:
        while True:
            try:
                frame = ex.sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed
            try:
                msg = P.decode(frame)
            except P.ProtocolError as exc:
                log.warning("executor %s sent a bad message: %s", ex.name, exc)
                continue
            if msg["type"] == P.OK and msg.get("rid") == P.READY_RID and not ex.ready:
                endpoint = msg.get("endpoint")
                ex.hot_endpoint = endpoint if isinstance(endpoint, str) and len(endpoint) < 256 else None
                ex.ready = True
                pending, ex.pending = ex.pending, []
                for frame in pending:
                    self._send_frame(ex, frame)
                continue
            if msg["type"] == P.OK and ex.lease_id is not None and msg.get("rid") == f"grant:{ex.lease_id}":
                # The executor holds the token now: the client may call it.
                ex.lease_ready = True
                rma = msg.get("rma") if isinstance(msg.get("rma"), dict) else None
                self.send(P.LEASE_READY, lease_id=ex.lease_id, endpoint=ex.hot_endpoint,
                          **({"rma": rma} if rma else {}))
                continue
            if msg["type"] in (P.RESULT, P.ERROR) and ex.busy is not None:
                run = self.running.get(ex.busy)
                if run is None or msg.get("rid") != f"{run.invocation_id}.{run.attempt}":
                    continue
                if run.reason is not None or ex.stopping:
                    continue  # being evicted or timed out: reported when the process is gone
                del self.running[run.invocation_id]
                now = time.monotonic()
                ex.busy, ex.idle_since = None, now
                ids = {"invocation_id": run.invocation_id, "attempt": run.attempt}
                # The executor's own figure (a CALL sent ahead began before this agent heard),
                # never more than this agent saw pass since it sent the call.
                run_s = msg.get("run_s")
                run_s = min(float(run_s), now - run.sent) if isinstance(run_s, (int, float)) and run_s >= 0 \
                    else now - run.started
                if msg["type"] == P.ERROR:
                    self.report(P.RESULT, **ids, outcome="error", error=f"executor: {msg.get('message')}")
                else:
                    binary = msg.get(P.VALUE_BIN)  # a binary value goes on as bytes, opaque
                    if isinstance(binary, bytes):
                        ids[P.VALUE_BIN] = binary
                    self.report(P.RESULT, **ids, outcome=msg.get("outcome", "error"), value_json=msg.get("value_json"),
                                error=msg.get("error"), traceback=P.text_tail(msg.get("traceback"), P.MAX_ERROR_CHARS),
                                output=P.text_tail(msg.get("output"), P.MAX_OUTPUT_BYTES), cpus=msg.get("cpus"),
                                run_s=run_s)
                if ex.cgroup is not None and (not ex.ahead or now - ex.procs_checked >= PROCS_CHECK_S):
                    ex.procs_checked = now
                    if len(ex.cgroup.pids()) > 1:
                        self._stop(ex, "the function left processes behind")  # a fresh executor next time
                if ex.ahead and not ex.stopping:
                    self._promote(ex)  # the next sent ahead has begun (faas_runtime.invocations)
                else:
                    self._start_waiting(run.slot_id)

    def _stop(self, ex: Executor, reason: str) -> None:
        """SIGTERM everything in the executor's cgroup; SIGKILL follows after the grace."""
        if ex.stopping:
            return
        ex.stop_reason = reason
        ex.kill_at = time.monotonic() + self.grace_s
        self._unsend(ex)  # what it had not begun runs elsewhere (faas_runtime.invocations)
        if ex.cgroup is not None:
            ex.cgroup.signal(signal.SIGTERM)
        _signal_group(ex.proc, signal.SIGTERM)

    def _hard_kill(self, ex: Executor) -> None:
        if ex.cgroup is not None:
            ex.cgroup.kill(timeout_s=2)
        _signal_group(ex.proc, signal.SIGKILL)

    def step_reap(self) -> None:
        now = time.monotonic()
        for ex in list(self.executors.values()):
            code = ex.proc.poll()
            if code is None:
                run = self.running.get(ex.busy) if ex.busy is not None else None
                if run is not None and now > run.deadline and run.reason is None:
                    run.reason = "timeout"
                    ex.stop_reason = "timeout"
                    ex.kill_at = now
                    self._hard_kill(ex)
                elif ex.stopping and now >= ex.kill_at:
                    self._hard_kill(ex)
                elif ex.idle and now - ex.idle_since > self.keep_warm_s:
                    self._stop(ex, "keep-warm timeout")
                elif ex.lease_id is not None:
                    self._lease_tick(ex, now)
                continue
            self._drain_executor(ex)  # a result sent just before it exited
            self._retire(ex, code)

    def _retire(self, ex: Executor, exit_code: int) -> None:
        """The executor process is gone: kill what is left, remove its cgroup, report."""
        oom = 0
        if ex.cgroup is not None:
            oom = ex.cgroup.oom_kills()
            ex.cgroup.remove()
        else:
            _signal_group(ex.proc, signal.SIGKILL)
        del self.executors[ex.name]
        self.poller.unregister(ex.sock)
        ex.sock.close()
        if ex.lease_id is not None:
            reason = ex.stop_reason or f"executor exited {exit_code}"
            tail = "" if ex.lease_ready or ex.stop_reason else _tail(ex.output_fd)
            self.send(P.LEASE_ENDED if ex.lease_ready else P.LEASE_FAILED, lease_id=ex.lease_id,
                      reason=f"{reason}: {tail}" if tail else reason)  # why it could not start
        run = self.running.pop(ex.busy, None) if ex.busy is not None else None
        if run is not None:
            ids = {"invocation_id": run.invocation_id, "attempt": run.attempt}
            if run.reason == "timeout":
                self.report(P.RESULT, **ids, outcome="timeout", error="timed out (killed at the function's timeout)")
            elif run.reason is not None:
                self.report(P.EVICTED, **ids, reason=run.reason)
            elif oom:
                self.report(P.RESULT, **ids, outcome="error",
                            error=f"killed at its memory limit ({ex.mem_mb} MiB): the kernel's OOM killer ended it")
            else:
                tail = _tail(ex.output_fd)
                self.report(P.RESULT, **ids, outcome="error",
                            error=f"executor exited {exit_code} without a result" + (f": {tail}" if tail else ""))
        elif ex.stop_reason not in (None, "keep-warm timeout", "agent shutting down") or exit_code not in (0, -15, -9):
            log.info("executor %s ended (%s, exit %s)", ex.name, ex.stop_reason, exit_code)
        os.close(ex.output_fd)
        shutil.rmtree(ex.run_dir, ignore_errors=True)  # fd-based, never follows the owner's links
        shutil.rmtree(ex.ctl_dir, ignore_errors=True)
        self._unsend(ex)  # an executor that died by itself (or timed out) with calls sent ahead
        if run is not None:
            self._start_waiting(run.slot_id)
