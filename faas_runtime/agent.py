"""faas-agent: one per node. Turns lend records into slots and runs invocations on them.

Steps of the loop (each small, none blocking for long):

  receive    RUN / CANCEL / REVOKE / LEASE_START / LEASE_END / WELCOME / ERROR from the
             co-scheduler; a malformed or wrong-version message gets a typed ERROR back
  executors  RESULT replies of the warm executors
  spool      read <spool>/<node>/*.json: a new "lent" record becomes a slot (LEND), a
             "revoked" one takes the slot back at once (REVOKE; its executors get
             SIGTERM, then SIGKILL after the grace, and their cgroups are removed)
  reap       executors that exited (report their invocation: OOM -> "memory limit"),
             invocations past their timeout, warm executors idle past keep-warm, leases
             past their end, leased executors that became ready
  heartbeat  every second, with the ids of the invocations running here

Executors (``faas_runtime.executor``) are warm: one per (function, slot, owner, image)
and busy with at most one invocation, reused until idle for ``keep_warm_s``. Each one
runs in the function's container (``faas_runtime.containers``), in its own cgroup below
the agent's subtree with cpuset = the slot's lent CPUs, the function's memory, a low CPU
weight and a pids limit, as the function owner with their groups, never root
(``faas_runtime.confinement``). A hot lease (``coscheduler.leases``) dedicates one to a
client, which then calls it directly.

The agent keeps nothing that the spool and the running processes cannot tell it again:
after a restart it kills the executor cgroups a crash left behind, re-reads the spool and
says HELLO; the co-scheduler requeues work the agent no longer runs.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import click
import zmq

from .logsetup import setup_logging

from . import as_user, curve, munge
from . import protocol as P
from .spool import SpoolWatcher
from .confinement import ConfinementError, ExecutorCgroup, Identity, Limits, Subtree, spawn
from .containers import Bind, ContainerError, RunSpec, build_argv, check_image, program
from .fabric import FabricConfig
from .images import CODE_DIR, CTL_DIR, LIB_DIR, RUN_DIR, RUNTIME_PACKAGES

log = logging.getLogger("faas.agent")

SPOOL_SCAN_S = 0.05
HELLO_EVERY_S = 1.0  # at most one HELLO (a munge credential) per second while not welcomed
REPORT_RESEND_S = 10.0  # a final report not acknowledged this long is sent again
CONTROL_SOCKET = "control.sock"
READY_RID = "ready"  # the executor's first message on its control socket (with its hot endpoint)
EXECUTOR_READY_TIMEOUT_S = 30.0
IMAGE_PYTHON = "/usr/bin/python3"  # the interpreter inside images, by absolute path


@dataclass
class Slot:
    slot_id: str
    job_id: int
    record: dict
    revoked: bool = False


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
    invocation_id: int
    attempt: int
    slot_id: str
    executor: Executor
    deadline: float  # monotonic
    started: float  # monotonic
    cores: frozenset[int] = frozenset()  # the lent Slurm cores it holds
    reason: Optional[str] = None  # why it is being stopped (None: it runs normally)


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
    assert set(found) <= set(RUNTIME_PACKAGES)
    return found


@dataclass
class Agent:
    node: str
    spool: Path
    endpoint: str
    workdir: Path
    grace_s: float = 2.0
    host_python: str = IMAGE_PYTHON if os.path.exists(IMAGE_PYTHON) else sys.executable
    keep_warm_s: float = 60.0
    container_runtime: str = "charliecloud"  # for functions that name an image but no runtime
    hot_host: str = "127.0.0.1"
    cgroups: bool = True
    cgroup_name: Optional[str] = None
    pids_max: int = 512
    cpu_weight: int = 10
    allow_root: bool = False
    munge_socket: Optional[str] = None  # the HELLO's munge credential (proves root on this node)
    curve_dir: Optional[Path] = None  # CurveZMQ keys (faas_runtime.curve); None: plain TCP
    # libfabric RMA for hot leases (FAAS_FABRIC, FAAS_FABRIC_DOMAIN; "off": ZeroMQ alone)
    fabric: FabricConfig = field(default_factory=FabricConfig.from_env)
    slots: dict[str, Slot] = field(default_factory=dict)
    running: dict[int, Running] = field(default_factory=dict)
    # RUN messages dispatched ahead (coscheduler config dispatch_ahead_s), FIFO: each starts
    # as soon as the lent cores it names are free here, without a round trip.
    waiting: dict[int, dict] = field(default_factory=dict)
    executors: dict[str, Executor] = field(default_factory=dict)
    # Final reports (RESULT, EVICTED) until the co-scheduler acknowledges them (ACK): resent
    # after a new WELCOME, so a co-scheduler restart or a lost session loses no result and
    # runs nothing twice. (invocation id, attempt) -> (type, fields, monotonic time sent).
    unacked: dict[tuple[int, int], tuple[str, dict, float]] = field(default_factory=dict)
    # Where each invocation this agent took was placed (slot id, lent cores), until its final
    # report is acknowledged: a HELLO lists reported-but-unacknowledged work as held, so a new
    # co-scheduler waits for the resent report instead of requeueing finished work.
    placed: dict[tuple[int, int], tuple[str, list]] = field(default_factory=dict)
    stop_requested: bool = False
    welcomed: bool = False
    coscheduler_uids: frozenset[int] = frozenset({0})  # whose munge credential a WELCOME may carry
    _last_hello: float = -1e9  # monotonic
    _hello_nonce: Optional[str] = None
    _session_key: Optional[bytes] = None  # from the WELCOME; every later message is MACed with it
    _spool_watcher: Optional[SpoolWatcher] = None

    def __post_init__(self) -> None:
        self.node_spool = self.spool / self.node
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o711)  # the executors' owners traverse to their run dirs, nothing more
        self.exec_root = self.workdir / "exec"  # run dirs: one per executor, its owner's
        self.ctl_root = self.workdir / "ctl"  # control sockets: root's directories, owner's socket
        for d in (self.exec_root, self.ctl_root):
            shutil.rmtree(d, ignore_errors=True)  # what a previous agent left
            d.mkdir(mode=0o711)
        self._names = itertools.count(1)
        self.packages = runtime_packages()
        self.subtree: Optional[Subtree] = None
        if self.cgroups:
            # Stable across restarts (so orphans are found), distinct per agent on one host.
            name = self.cgroup_name or f"slurm-faas-{self.node}-{hashlib.sha1(str(self.workdir.resolve()).encode()).hexdigest()[:8]}"
            self.subtree = Subtree(name)
            self.subtree.reap_orphans()
        self.ctx = zmq.Context()
        # No chosen identity: the co-scheduler's ROUTER names each connection itself, and
        # binds this node to the connection whose HELLO proved root (docs/security.md).
        self.sock = P.configure(self.ctx.socket(zmq.DEALER))
        if self.curve_dir is not None:
            curve.setup_agent(self.sock, self.curve_dir, self.node)
        self.sock.connect(self.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def send(self, msg_type: str, **fields) -> None:
        try:
            self.sock.send(P.encode(msg_type, node=self.node, **fields), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("co-scheduler queue full; dropped %s (the heartbeat repairs it)", msg_type)

    def report(self, msg_type: str, **fields) -> None:
        """A final report (RESULT or EVICTED): kept until the co-scheduler acknowledges it."""
        key = (int(fields["invocation_id"]), int(fields["attempt"]))
        self.unacked[key] = (msg_type, fields, time.monotonic())
        if self.welcomed:
            self.send(msg_type, **fields)

    def _resend_reports(self, older_than_s: float = 0.0) -> None:
        now = time.monotonic()
        for key, (kind, fields, sent) in list(self.unacked.items()):
            if now - sent >= older_than_s:
                self.unacked[key] = (kind, fields, now)
                self.send(kind, **fields)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("agent %s: spool %s, co-scheduler %s, cgroups %s", self.node, self.node_spool, self.endpoint,
                 self.subtree.base if self.subtree else "off")
        next_beat = next_scan = 0.0
        while not self.stop_requested:
            ready = dict(self.poller.poll(timeout=int(SPOOL_SCAN_S * 1000)))
            if self.sock in ready:
                self._guarded(self.step_receive)
            if len(ready) > (self.sock in ready):
                self._guarded(self.step_executors)
            now = time.monotonic()
            watcher = self._spool_watcher
            if now >= next_scan or (watcher is not None and watcher.fileno() in ready):
                self._guarded(self.step_spool)
                next_scan = now + SPOOL_SCAN_S
            self._guarded(self.step_reap)
            if now >= next_beat:
                self._guarded(self.step_heartbeat)
                next_beat = now + P.HEARTBEAT_INTERVAL_S
        self.shutdown()

    def _guarded(self, step) -> None:
        try:
            step()
        except Exception:
            log.exception("step %s failed", step.__name__)

    def shutdown(self) -> None:
        """Stop every executor (the co-scheduler requeues their work) and close the socket."""
        self.waiting.clear()
        for ex in list(self.executors.values()):
            self._stop(ex, "agent shutting down")
        deadline = time.monotonic() + self.grace_s
        while self.executors and time.monotonic() < deadline + 1:
            self.step_reap()
            time.sleep(0.05)
        for ex in list(self.executors.values()):
            self._hard_kill(ex)
        self.step_reap()
        if self.subtree is not None:
            self.subtree.remove()
        self.ctx.destroy(linger=0)  # closes every socket, the executors' included

    # -- receive ------------------------------------------------------------------------

    def step_receive(self) -> None:
        while True:
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            rid = None
            try:
                msg = P.decode(parts[0])
                rid = msg.get("rid")
                if not self._authentic(msg, parts):
                    continue
                self._dispatch(msg)
            except P.ProtocolError as exc:
                log.warning("refused a bad message from the co-scheduler: %s: %s", exc.code, exc)
                self.send(P.ERROR, rid=rid, code=exc.code, message=str(exc))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("refused a message with missing or bad fields: %r", exc)
                self.send(P.ERROR, rid=rid, code=P.E_INVALID, message=f"missing or bad field: {exc!r}")

    def _authentic(self, msg: dict, parts: list[bytes]) -> bool:
        """Whether a message really comes from the co-scheduler: WELCOME proves it with a
        munge credential of the co-scheduler's uid that carries this session's key and the
        nonce of our HELLO; every later message carries that key's MAC. Only an
        ``unknown-agent`` error (which merely makes us say HELLO again) needs no proof."""
        kind = msg["type"]
        if kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
            return True
        if kind == P.WELCOME:
            try:
                cred = munge.decode(str(msg.get("cred", "")), self.munge_socket)
                doc = json.loads(cred.payload)
            except (munge.MungeError, ValueError) as exc:
                log.warning("refused a WELCOME: %s", exc)
                return False
            if cred.uid not in self.coscheduler_uids or not isinstance(doc, dict) \
                    or doc.get("node") != self.node or doc.get("nonce") != self._hello_nonce:
                log.warning("refused a WELCOME from uid %d that is not the answer to our HELLO", cred.uid)
                return False
            self._session_key = bytes.fromhex(str(doc.get("key", "")))
            return bool(self._session_key)
        if self._session_key is None or len(parts) != 2 or not P.mac_ok(self._session_key, parts[0], parts[1]):
            log.warning("refused a %s message without this session's MAC", kind)
            return False
        return True

    def _dispatch(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == P.WELCOME:
            self.welcomed = True
            for slot in self.slots.values():  # lends are idempotent: announce them all again
                if not slot.revoked:
                    self.send(P.LEND, record=slot.record)
            self._resend_reports()  # what a lost session never acknowledged (duplicates are ignored)
        elif kind == P.ACK:
            for inv_id, attempt in msg.get("reports") or ():
                self.unacked.pop((inv_id, attempt), None)
                self.placed.pop((inv_id, attempt), None)
        elif kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
            # A restarted co-scheduler, or this connection is new to it: prove who we are again.
            self.welcomed = False
            self._hello()
        elif kind == P.ERROR:
            log.warning("co-scheduler error: %s: %s", msg.get("code"), msg.get("message"))
        elif kind == P.RUN:
            self._start(msg)
        elif kind == P.REVOKE:
            self._revoked_by_coscheduler(int(msg["job_id"]), msg.get("reason", "revoked by the co-scheduler"))
        elif kind == P.CANCEL:
            if self.waiting.pop(int(msg["invocation_id"]), None) is not None:
                return  # never started: nothing to stop
            run = self.running.get(int(msg["invocation_id"]))
            if run is not None:
                run.reason = "cancelled"
                self._stop(run.executor, "cancelled")
        elif kind == P.LEASE_START:
            self._lease_start(msg)
        elif kind == P.LEASE_END:
            self._lease_end(str(msg["lease_id"]), msg.get("reason", "released"))
        elif kind in (P.OK, P.WELCOME):
            pass
        else:
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"an agent does not take {kind!r}")

    def _hello(self) -> None:
        """HELLO with a munge credential of this agent's uid (root) bound to the message, and
        everything this agent holds, so a new co-scheduler adopts it instead of running it again."""
        now = time.monotonic()
        if now - self._last_hello < HELLO_EVERY_S:
            return  # one in flight: its WELCOME or error answers
        self._last_hello = now
        held = [{"invocation_id": r.invocation_id, "attempt": r.attempt, "slot_id": r.slot_id,
                 "cpus": sorted(r.cores), "running": True} for r in self.running.values()]
        held += [{"invocation_id": inv_id, "attempt": int(m["attempt"]), "slot_id": m["slot_id"],
                  "cpus": list(m.get("cpus") or ()), "running": False} for inv_id, m in self.waiting.items()]
        held += [{"invocation_id": inv_id, "attempt": attempt, "slot_id": self.placed[(inv_id, attempt)][0],
                  "cpus": self.placed[(inv_id, attempt)][1], "running": False}
                 for inv_id, attempt in self.unacked if (inv_id, attempt) in self.placed]
        self._hello_nonce = secrets.token_hex(16)  # the WELCOME must carry it back
        body = {"v": P.VERSION, "type": P.HELLO, "node": self.node, "held": held, "nonce": self._hello_nonce}
        try:
            cred = munge.encode(P.body_digest(body).encode(), self.munge_socket)
        except munge.MungeError as exc:
            log.error("cannot make the HELLO's munge credential: %s", exc)
            return
        self.send(P.HELLO, held=held, nonce=body["nonce"], cred=cred)

    def _held(self) -> list[list[int]]:
        """The invocations this agent holds, running or waiting for their cores: [id, attempt]."""
        return sorted([[r.invocation_id, r.attempt] for r in self.running.values()]
                      + [[inv_id, int(m["attempt"])] for inv_id, m in self.waiting.items()])

    # -- spool --------------------------------------------------------------------------

    def step_spool(self) -> None:
        # faas_runtime/spool.py: inotify (its fd sits in the poller, so a revoke wakes the
        # loop at once) with rescans as a backstop; the first call reads the whole spool.
        watcher = self._spool_watcher
        if watcher is None:
            watcher = self._spool_watcher = SpoolWatcher(self.node_spool)
            if watcher.fileno() is not None:
                self.poller.register(watcher.fileno(), zmq.POLLIN)
        for _path, record in watcher.changes():
            self._apply_record(record)

    def _apply_record(self, record: dict) -> None:
        if record.get("version") != 1:
            log.warning("lend record of unknown version %r ignored", record.get("version"))
            return
        job_id = int(record["job_id"])
        slot_id = f"{job_id}@{self.node}"
        slot = self.slots.get(slot_id)
        if record.get("state") == "lent":
            if slot is None and record.get("slurm_cpus"):
                self.slots[slot_id] = Slot(slot_id, job_id, record)
                log.info("job %d lends CPUs %s (OS %s), %s MiB", job_id, record["slurm_cpus"],
                         record["os_cpus"], record["mem_mb"])
                if self.welcomed:
                    self.send(P.LEND, record=record)
        elif record.get("state") == "revoked":
            if slot is None:
                slot = self.slots[slot_id] = Slot(slot_id, job_id, record)
            if not slot.revoked:
                slot.revoked = True
                self.revoke(slot, "the batch job ended")

    def _revoked_by_coscheduler(self, job_id: int, reason: str) -> None:
        self._mark_record_revoked(job_id)
        slot = self.slots.get(f"{job_id}@{self.node}")
        if slot is None or slot.revoked:
            return
        slot.revoked = True
        self._stop_slot(slot, reason)
        log.info("slot %s revoked by the co-scheduler: %s", slot.slot_id, reason)

    def _mark_record_revoked(self, job_id: int) -> None:
        """Mark the lend record revoked on disk (the plugin's own C function), so that a
        restarted agent does not announce a lend the co-scheduler already ended."""
        try:
            from spank_plugin.core import revoke_lend_record

            revoke_lend_record(self.spool, self.node, job_id)  # False: no record; idempotent
        except Exception as exc:  # the slot is still taken back; only the restart case suffers
            log.warning("could not mark the lend record of job %d revoked: %s", job_id, exc)

    def revoke(self, slot: Slot, reason: str) -> None:
        """Give a slot back now: tell the co-scheduler first, then stop what runs on it."""
        self.send(P.REVOKE, job_id=slot.job_id, reason=reason)
        self._stop_slot(slot, reason)
        log.info("slot %s revoked: %s", slot.slot_id, reason)

    def _stop_slot(self, slot: Slot, reason: str) -> None:
        for inv_id, msg in list(self.waiting.items()):
            if msg["slot_id"] == slot.slot_id:
                del self.waiting[inv_id]
                self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]),
                          reason=f"slot {slot.slot_id} revoked: {reason}")
        for run in self.running.values():
            if run.slot_id == slot.slot_id:
                run.reason = f"slot {slot.slot_id} revoked: {reason}"
        for ex in list(self.executors.values()):
            if ex.slot_id == slot.slot_id:
                self._stop(ex, f"slot {slot.slot_id} revoked: {reason}")

    # -- executors ----------------------------------------------------------------------

    def _executor_for(self, msg: dict, slot: Slot) -> Executor:
        """An idle warm executor of this function on this slot, or a new one (cold start)."""
        image = msg.get("image") or None
        runtime = msg.get("runtime") or (self.container_runtime if image else "none")
        # The group is never the sender's to choose: _spawn_executor takes it from the user database.
        key = (slot.slot_id, int(msg["uid"]), msg["entrypoint"], msg["code_dir"], image, runtime, int(msg["mem_mb"]))
        for ex in self.executors.values():
            if ex.key == key and ex.idle:
                return ex
        ex = self._spawn_executor(key, slot)
        ex.function_id = msg.get("function_id")
        return ex

    def _spawn_executor(self, key: tuple, slot: Slot) -> Executor:
        slot_id, uid, entrypoint, code_dir, image, runtime, mem_mb = key
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
            env["PYTHONPATH"] = ":".join(dict.fromkeys(str(Path(p).parent) for p in self.packages.values()))
            python, code, rdir, ctl, binds = self.host_python, code_dir, str(run_dir), str(ctl_dir), ()
        else:
            env["PYTHONPATH"] = LIB_DIR
            python, code, rdir, ctl = IMAGE_PYTHON, CODE_DIR, RUN_DIR, CTL_DIR
            binds = (Bind(code_dir, CODE_DIR), Bind(str(run_dir), RUN_DIR, read_only=False),
                     Bind(str(ctl_dir), CTL_DIR, read_only=False),
                     *(Bind(src, f"{LIB_DIR}/{pkg}") for pkg, src in self.packages.items()))
        spec = RunSpec(image=image, argv=(python, "-m", "faas_runtime.executor", "--entrypoint", entrypoint,
                                          "--code", code, "--run-dir", rdir, "--hot-host", self.hot_host,
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
        try:
            ex.sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._stop(ex, "executor does not read its socket")

    # -- running invocations ------------------------------------------------------------

    def _start(self, msg: dict) -> None:
        inv_id, attempt = int(msg["invocation_id"]), int(msg["attempt"])
        self.placed.setdefault((inv_id, attempt), (str(msg["slot_id"]), list(msg.get("cpus") or ())))
        slot = self.slots.get(msg["slot_id"])
        if slot is None or slot.revoked:
            self.report(P.EVICTED, invocation_id=inv_id, attempt=attempt, reason=f"slot {msg['slot_id']} is not lent here")
            return
        lent = set(slot.record["os_cpus"])
        if not set(msg["os_cpus"]) <= lent:
            self.report(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                      error=f"CPUs {msg['os_cpus']} are not lent by job {slot.job_id}")
            return
        if inv_id in self.running or inv_id in self.waiting:
            return  # a duplicate RUN of what runs or waits here already
        cores = frozenset(msg.get("cpus") or ())
        if cores & self._blocked_cores(slot.slot_id):
            self.waiting[inv_id] = msg  # dispatched ahead: starts when its cores free
            return
        self._launch(msg, slot, cores)

    def _running_cores(self, slot_id: str) -> set[int]:
        return {c for run in self.running.values() if run.slot_id == slot_id for c in run.cores}

    def _blocked_cores(self, slot_id: str) -> set[int]:
        """Cores of ``slot_id`` that a new invocation must wait for: those running
        invocations hold, and those invocations already waiting will take first."""
        blocked = self._running_cores(slot_id)
        lent = self.slots[slot_id].record["slurm_cpus"]
        for msg in self.waiting.values():
            if len(blocked) >= len(lent):
                break  # every core is taken: no need to read the rest of the queue
            if msg["slot_id"] == slot_id:
                blocked.update(msg.get("cpus") or ())
        return blocked

    def _start_waiting(self, slot_id: str) -> None:
        """Start, in order, the waiting invocations of ``slot_id`` whose cores are free;
        one that must still wait keeps its cores from those behind it (FIFO per core)."""
        slot = self.slots.get(slot_id)
        if self.stop_requested or slot is None or slot.revoked:
            return  # shutting down or revoked: the co-scheduler requeues what waits
        lent = len(slot.record["slurm_cpus"])
        while True:
            blocked, ready = self._running_cores(slot_id), []
            for inv_id, msg in self.waiting.items():
                if len(blocked) >= lent:
                    break  # the rest waits behind cores that are all taken
                if msg["slot_id"] == slot_id:
                    cores = frozenset(msg.get("cpus") or ())
                    if not cores & blocked:
                        ready.append((inv_id, msg, cores))
                    blocked |= cores
            freed = False  # one that did not start leaves its cores to those behind it
            for inv_id, msg, cores in ready:
                del self.waiting[inv_id]
                left = _lend_left(slot.record)
                if left < float(msg["timeout_s"]):
                    # It waited; the lend now ends before its timeout could: hand it back
                    # unstarted (the co-scheduler requeues it without using an attempt).
                    self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]), unstarted=True,
                              reason=f"the lend of {slot_id} ends in {max(left, 0):.0f} s, before its timeout")
                    freed = True
                    continue
                self._launch(msg, slot, cores)
                freed |= inv_id not in self.running  # could not start (reported)
            if not freed:
                return

    def _launch(self, msg: dict, slot: Slot, cores: frozenset[int]) -> None:
        inv_id, attempt = int(msg["invocation_id"]), int(msg["attempt"])
        try:
            ex = self._executor_for(msg, slot)
        except (ContainerError, ConfinementError, OSError, KeyError, ValueError) as exc:
            log.warning("invocation %d cannot start: %s", inv_id, exc)
            self.report(P.RESULT, invocation_id=inv_id, attempt=attempt, outcome="error",
                      error=f"could not start the function: {exc}")
            return
        ex.busy = inv_id
        now = time.monotonic()
        self.running[inv_id] = Running(inv_id, attempt, slot.slot_id, ex, now + float(msg["timeout_s"]), now, cores)
        self._call(ex, P.CALL, rid=f"{inv_id}.{attempt}", payload_json=msg["payload_json"],
                   cpus=list(msg["os_cpus"]))
        if self.welcomed:  # else the HELLO lists it as running
            self.send(P.STARTED, invocation_id=inv_id, attempt=attempt)

    def step_executors(self) -> None:
        for ex in list(self.executors.values()):
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
            if msg["type"] == P.OK and msg.get("rid") == READY_RID and not ex.ready:
                endpoint = msg.get("endpoint")
                ex.hot_endpoint = endpoint if isinstance(endpoint, str) and len(endpoint) < 256 else None
                ex.ready = True
                pending, ex.pending = ex.pending, []
                for frame in pending:
                    try:
                        ex.sock.send(frame, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        self._stop(ex, "executor does not read its socket")
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
                ex.busy, ex.idle_since = None, time.monotonic()
                ids = {"invocation_id": run.invocation_id, "attempt": run.attempt}
                if msg["type"] == P.ERROR:
                    self.report(P.RESULT, **ids, outcome="error", error=f"executor: {msg.get('message')}")
                else:
                    self.report(P.RESULT, **ids, outcome=msg.get("outcome", "error"), value_json=msg.get("value_json"),
                              error=msg.get("error"), cpus=msg.get("cpus"), run_s=ex.idle_since - run.started)
                if ex.cgroup is not None and len(ex.cgroup.pids()) > 1:
                    self._stop(ex, "the function left processes behind")  # a fresh executor next time
                self._start_waiting(run.slot_id)

    def _stop(self, ex: Executor, reason: str) -> None:
        """SIGTERM everything in the executor's cgroup; SIGKILL follows after the grace."""
        if ex.stopping:
            return
        ex.stop_reason = reason
        ex.kill_at = time.monotonic() + self.grace_s
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
            self.send(P.LEASE_ENDED if ex.lease_ready else P.LEASE_FAILED, lease_id=ex.lease_id,
                      reason=ex.stop_reason or f"executor exited {exit_code}")
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
        if run is not None:
            self._start_waiting(run.slot_id)

    # -- hot leases (coscheduler.leases grants them; faas_runtime.client uses them) -----

    def _lease_start(self, msg: dict) -> None:
        lease_id = str(msg["lease_id"])
        slot = self.slots.get(msg["slot_id"])
        if slot is None or slot.revoked:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=f"slot {msg['slot_id']} is not lent here")
            return
        try:
            ex = self._executor_for(msg, slot)
        except (ContainerError, ConfinementError, OSError, KeyError, ValueError) as exc:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=f"could not start the function: {exc}")
            return
        ex.lease_id, ex.lease_token, ex.lease_ready = lease_id, str(msg["token"]), False
        ex.lease_expires = time.monotonic() + float(msg.get("duration_s", 600))
        grant = {}
        fabric = self._fabric_for(msg.get("fabric"))
        if fabric is not None:
            grant["fabric"] = fabric
        self._call(ex, P.GRANT, rid=f"grant:{lease_id}", token=ex.lease_token, cpus=list(msg["os_cpus"]), **grant)

    def _fabric_for(self, wanted) -> Optional[dict]:
        """What the executor opens for a lease whose client asked for RMA with ``wanted``
        ({provider, domain}): None when this node's fabric is off or nothing was asked."""
        if not self.fabric.enabled or not isinstance(wanted, dict) or not isinstance(wanted.get("provider"), str):
            return None
        provider = wanted["provider"].strip()
        if not FabricConfig(provider).enabled:
            return None
        domain = self.fabric.domain if provider == self.fabric.provider and self.fabric.domain else \
            str(wanted.get("domain") or "")
        return {"provider": provider, "domain": domain, "no_cqdata": self.fabric.no_cqdata}

    def _lease_tick(self, ex: Executor, now: float) -> None:
        if not ex.lease_ready and now - ex.started_at > EXECUTOR_READY_TIMEOUT_S:
            self._stop(ex, "executor did not start in time")
        if ex.lease_expires is not None and now > ex.lease_expires:
            self._lease_end(ex.lease_id, "the lease expired")

    def _lease_end(self, lease_id: str, reason: str) -> None:
        for ex in self.executors.values():
            if ex.lease_id == lease_id:
                self._call(ex, P.LEASE_END, token=ex.lease_token, reason=reason)
                self.send(P.LEASE_ENDED, lease_id=lease_id, reason=reason)
                ex.lease_id = ex.lease_token = ex.lease_expires = None
                ex.idle_since = time.monotonic()
                return

    def step_heartbeat(self) -> None:
        if not self.welcomed:
            self._hello()
            return
        self._resend_reports(older_than_s=REPORT_RESEND_S)
        warm: dict[str, list] = {}  # slot -> functions with an idle executor (placement prefers them)
        for ex in self.executors.values():
            if ex.idle and ex.function_id is not None:
                warm.setdefault(ex.slot_id, []).append(ex.function_id)
        self.send(P.HEARTBEAT, running=self._held(), warm=warm)


def _lend_left(record: dict) -> float:
    """Seconds until a lend ends (the job's end minus its ``until``); inf when unknown."""
    end = record.get("end_time") or 0
    return float("inf") if not end else float(end) - 60 * int(record.get("until_min") or 0) - time.time()


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


@click.command()
@click.option("--node", envvar="FAAS_NODE", required=True, help="this node's Slurm name")
@click.option("--spool", envvar="FAAS_SPOOL", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/spool/slurm-faas"), show_default=True, help="the plugin's spool directory")
@click.option("--coscheduler", "endpoint", envvar="FAAS_COSCHEDULER", required=True, help="e.g. tcp://head:7800")
@click.option("--workdir", envvar="FAAS_AGENT_WORKDIR", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/slurm-faas/agent"), show_default=True)
@click.option("--grace", type=float, default=2.0, show_default=True, help="seconds between SIGTERM and SIGKILL on revoke")
@click.option("--keep-warm", "keep_warm_s", type=float, default=60.0, show_default=True,
              help="seconds an idle warm executor is kept")
@click.option("--container-runtime", type=click.Choice(["charliecloud", "apptainer", "singularity", "sarus", "bubblewrap"]),
              default="charliecloud", show_default=True, help="for functions that name an image but no runtime")
@click.option("--hot-host", default="127.0.0.1", show_default=True,
              help="address of this node that hot clients reach executors at")
@click.option("--cgroups/--no-cgroups", default=True, show_default=True,
              help="confine executors in cgroups (needs root, or a delegated subtree)")
@click.option("--pids-max", type=click.IntRange(min=8), default=512, show_default=True, help="processes per executor")
@click.option("--allow-root-functions", is_flag=True,
              help="run functions that root submitted as root (test clusters only)")
@click.option("--munge-socket", envvar="FAAS_MUNGE_SOCKET", default=None,
              help="munged's socket (default: munge's own): the HELLO's credential, and the WELCOME's check")
@click.option("--coscheduler-uid", "coscheduler_uids", type=int, multiple=True, default=(0,), show_default=True,
              help="uid the co-scheduler runs as (its WELCOME must carry a munge credential of it); repeatable")
@click.option("--curve-dir", envvar=curve.ENV, type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CurveZMQ keys from `faas-admin keygen` (this node's secret, the co-scheduler's public key)")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None)
@click.option("--log-level", default="INFO", show_default=True)
def main(node: str, spool: Path, endpoint: str, workdir: Path, grace: float, keep_warm_s: float,
         container_runtime: str, hot_host: str, cgroups: bool, pids_max: int, allow_root_functions: bool,
         munge_socket: Optional[str], coscheduler_uids: tuple[int, ...], curve_dir: Optional[Path],
         log_file: Optional[str], log_level: str) -> None:
    """Run the slurm-faas node agent in the foreground."""
    setup_logging(log_level, log_file)
    agent = Agent(node=node, spool=spool, endpoint=endpoint, workdir=workdir / node, grace_s=grace,
                  keep_warm_s=keep_warm_s, container_runtime=container_runtime, hot_host=hot_host,
                  cgroups=cgroups, pids_max=pids_max, allow_root=allow_root_functions, munge_socket=munge_socket,
                  coscheduler_uids=frozenset(coscheduler_uids), curve_dir=curve_dir)

    def request_stop(signum, _frame):
        agent.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent.run()


if __name__ == "__main__":
    main()
