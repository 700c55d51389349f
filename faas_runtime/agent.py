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
  memory     each lending job's memory (its cgroup), every ``MEMORY_EVERY_S``: job usage +
             lent + margin stays within the job's memory; the lend shrinks at once and
             regrows after a hold-down (faas_runtime.memory_watch)
  ahead      waiting invocations sent ahead to the executors of their cores (invocations)
  heartbeat  every ``heartbeat_s`` (the co-scheduler sets it: WELCOME, ACK), with what is held

This module owns the loop, the conversation with the co-scheduler (HELLO with a munge
credential, the WELCOME's proof and every later message's MAC, ACK of the final reports
kept until acknowledged) and the spool (lend records -> slots, revokes). It starts, signals
and reaps processes only through faas_runtime.executors and opens nothing in the
executors' directories; the rest of the agent is mixed in from one module per concern:

  faas_runtime.executors    the warm executors: one per (function, slot, owner, image),
                            running one invocation at a time (more may be sent ahead
                            to it, faas_runtime.invocations), reused until idle for
                            ``keep_warm_s``; each in the function's container, in its own
                            cgroup (cpuset = the slot's lent CPUs, the function's memory, a
                            low CPU weight, a pids limit), as the function owner with their
                            groups, never root (faas_runtime.confinement)
  faas_runtime.invocations  RUN: start on the lent cores it names, or wait for them
  faas_runtime.hot_leases   a hot lease (coscheduler.leases) dedicates an executor to a
                            client, which then calls it directly
  faas_runtime.memory_watch the memory guard: a lend shrinks when its job grows

The agent keeps nothing that the spool and the running processes cannot tell it again:
after a restart it kills the executor cgroups a crash left behind, re-reads the spool and
says HELLO; the co-scheduler requeues work the agent no longer runs.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import click
import zmq

from .logsetup import setup_logging

from . import munge
from . import protocol as P
from .addresses import agent_addresses
from .agent_config import agent_options
from .failover import AgentFailover
from .spool import SpoolWatcher
from .executors import IMAGE_PYTHON, Executor, ExecutorPool, Running, runtime_packages, user_identity
from .fabric import FabricConfig
from .hot_leases import HotLeases
from .invocations import Invocations
from .memory_watch import GuardConfig, MemoryGuard

# The names other modules and the tests import from here.
__all__ = ["Agent", "Executor", "Running", "Slot", "main", "runtime_packages", "user_identity"]

log = logging.getLogger("faas.agent")

SPOOL_SCAN_S = 0.05
# The memory guard's sample period: its margin covers a job's growth between two samples
# (docs/runtime.md); reading the job's cgroup every loop turn cost more than the invocations.
MEMORY_EVERY_S = 0.02
REAP_EVERY_S = 0.005  # executors that exited, timeouts, keep-warm: looked at this often, not every turn
HELLO_EVERY_S = 1.0  # at most one HELLO (a munge credential) per second while not welcomed
REPORT_RESEND_S = 10.0  # a final report not acknowledged this long is sent again


@dataclass
class Slot:
    slot_id: str
    job_id: int
    record: dict
    revoked: bool = False


@dataclass
class Agent(ExecutorPool, Invocations, HotLeases, MemoryGuard, AgentFailover):
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
    cgroup_root: Path = Path("/sys/fs/cgroup")  # where the jobs' memory cgroups are (task/cgroup)
    memory: GuardConfig = field(default_factory=GuardConfig)
    memory_slots: dict = field(default_factory=dict)  # slot id -> memory_watch.SlotMemory
    parked: dict = field(default_factory=dict)  # RUNs the memory guard holds back (memory_watch)
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
    seen_run: float = 0.0  # sent_at of the newest RUN read (heartbeats carry it)
    heartbeat_s: float = P.HEARTBEAT_INTERVAL_S  # the co-scheduler sets it (WELCOME, ACK): longer on big clusters
    _batch: list = field(default_factory=list)  # reports of this loop turn (flush_reports)
    refill: set = field(default_factory=set)  # slots whose waiting invocations may go ahead (step_ahead)
    _spool_watcher: Optional[SpoolWatcher] = None

    def __post_init__(self) -> None:
        self.node_spool = self.spool / self.node
        self._init_executors()
        self.ctx = zmq.Context()
        # No chosen identity: the co-scheduler's ROUTER names each connection itself, and
        # binds this node to the connection whose HELLO proved root (docs/security.md).
        self.poller = zmq.Poller()
        self._open_link()  # faas_runtime.failover: one address, or the active co-scheduler of several

    def send(self, msg_type: str, **fields) -> None:
        if msg_type in P.REPORT_TYPES:
            self._batch.append({"type": msg_type, **fields})  # one REPORTS per loop turn
            return
        self._send_now(msg_type, **fields)

    def _send_now(self, msg_type: str, **fields) -> None:
        try:
            self.sock.send(P.encode(msg_type, node=self.node, **fields), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("co-scheduler queue full; dropped %s (the heartbeat repairs it)", msg_type)

    def flush_reports(self) -> None:
        """The reports of this loop turn in one message (one frame, one co-scheduler read)."""
        batch, self._batch = self._batch, []
        if len(batch) == 1:
            self._send_now(batch[0].pop("type"), **batch[0])
        elif batch:
            self._send_now(P.REPORTS, reports=batch)

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
        next_beat = next_scan = next_memory = next_reap = 0.0
        while not self.stop_requested:
            ready = dict(self.poller.poll(timeout=int(SPOOL_SCAN_S * 1000)))
            if self.sock in ready:
                self._guarded(self.step_receive)
            if len(ready) > (self.sock in ready):
                self._guarded(self.step_executors, ready)
            now = time.monotonic()
            watcher = self._spool_watcher
            if now >= next_scan or (watcher is not None and watcher.fileno() in ready):
                self._guarded(self.step_spool)
                next_scan = now + SPOOL_SCAN_S
            if now >= next_reap:
                self._guarded(self.step_reap)
                next_reap = now + REAP_EVERY_S
            if now >= next_memory:
                self._guarded(self.step_memory)
                next_memory = now + MEMORY_EVERY_S
            self._guarded(self.step_ahead)
            self._guarded(self.step_link)
            if now >= next_beat:
                self._guarded(self.step_heartbeat)
                next_beat = now + (self.heartbeat_s if self.welcomed else HELLO_EVERY_S)
            self._guarded(self.flush_reports)
        self.shutdown()

    def _guarded(self, step, *args) -> None:
        try:
            step(*args)
        except Exception:
            log.exception("step %s failed", step.__name__)

    def shutdown(self) -> None:
        """Stop every executor (the co-scheduler requeues their work) and close the socket."""
        for ex in list(self.executors.values()):
            self._stop(ex, "agent shutting down")
        self.waiting.clear()  # after the stops: with what was sent ahead and given back
        self.parked.clear()
        deadline = time.monotonic() + self.grace_s
        while self.executors and time.monotonic() < deadline + 1:
            self.step_reap()
            time.sleep(0.05)
        for ex in list(self.executors.values()):
            self._hard_kill(ex)
        self.step_reap()
        self.flush_reports()
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
        nonce of our HELLO; every later message carries that key's MAC. Only the errors
        ``unknown-agent`` and ``standby`` (say HELLO again, here or elsewhere) need no proof."""
        kind = msg["type"]
        if kind == P.ERROR and msg.get("code") in (P.E_UNKNOWN_AGENT, P.E_STANDBY):
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
        if kind in (P.WELCOME, P.ACK):
            self.heartbeat_s = P.heartbeat_period(msg.get("heartbeat_s"), self.heartbeat_s)
        if kind == P.WELCOME:
            self.welcomed = True
            for slot in self.slots.values():  # lends are idempotent: announce them all again
                if not slot.revoked:
                    self.send(P.LEND, record=self.offered_record(slot))  # as the memory guard has it
            self._resend_reports()  # what a lost session never acknowledged (duplicates are ignored)
        elif kind == P.ACK:
            for inv_id, attempt in msg.get("reports") or ():
                self.unacked.pop((inv_id, attempt), None)
                self.placed.pop((inv_id, attempt), None)
        elif kind == P.ERROR and msg.get("code") == P.E_UNKNOWN_AGENT:
            # A restarted co-scheduler, or this connection is new to it: prove who we are again.
            self.welcomed = False
            self._hello()
        elif kind == P.ERROR and msg.get("code") == P.E_STANDBY:
            self.standby_answered()  # step_link tries the next address
        elif kind == P.ERROR:
            log.warning("co-scheduler error: %s: %s", msg.get("code"), msg.get("message"))
        elif kind in (P.RUN, P.RUNS):
            for run in (msg["runs"] if kind == P.RUNS else [msg]):
                # The newest RUN read: the co-scheduler takes work dispatched before it that this
                # agent does not hold as lost (a RUN still queued on a slow socket is not).
                self.seen_run = max(self.seen_run, float(run.get("sent_at") or 0))
                if self.memory_admits(run):  # else parked by the memory guard (memory_watch)
                    self._start(run)
        elif kind == P.REVOKE:
            self._revoked_by_coscheduler(int(msg["job_id"]), msg.get("reason", "revoked by the co-scheduler"))
        elif kind == P.CANCEL:
            if self.waiting.pop(int(msg["invocation_id"]), None) is not None:
                return  # never started: nothing to stop
            if self._drop_ahead(int(msg["invocation_id"])):
                return  # sent ahead, not begun: the executor drops it (faas_runtime.invocations)
            if self.parked.pop(int(msg["invocation_id"]), None) is not None:
                return  # held back by the memory guard: never started
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
                  "cpus": list(m.get("cpus") or ()), "running": False}
                 for inv_id, m in [*self.waiting.items(), *((i, pm) for i, (pm, _) in self.parked.items()),
                                   *((i, a[0]) for ex in self.executors.values() for i, a in ex.ahead.items())]]
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
                      + [[inv_id, int(m["attempt"])] for inv_id, m in self.waiting.items()]
                      + [[inv_id, int(m["attempt"])] for inv_id, (m, _) in self.parked.items()]
                      + [[inv_id, int(a[0]["attempt"])] for ex in self.executors.values() for inv_id, a in ex.ahead.items()])

    def step_heartbeat(self) -> None:
        if not self.welcomed:
            self._hello()
            return
        self._resend_reports(older_than_s=REPORT_RESEND_S)
        self.flush_reports()  # first: a heartbeat must not overtake the RESULT of work it no longer lists
        warm: dict[str, list] = {}  # slot -> functions with an idle executor (placement prefers them)
        for ex in self.executors.values():
            if ex.idle and ex.function_id is not None:
                warm.setdefault(ex.slot_id, []).append(ex.function_id)
        self.send(P.HEARTBEAT, running=self._held(), warm=warm, seen=self.seen_run, every=self.heartbeat_s)

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
        for run in self.running.values():
            if run.slot_id == slot.slot_id:
                run.reason = f"slot {slot.slot_id} revoked: {reason}"
        for ex in list(self.executors.values()):
            if ex.slot_id == slot.slot_id:
                self._stop(ex, f"slot {slot.slot_id} revoked: {reason}")  # what was sent ahead: reported
        for inv_id, msg in list(self.waiting.items()):
            if msg["slot_id"] == slot.slot_id:
                del self.waiting[inv_id]
                self.report(P.EVICTED, invocation_id=inv_id, attempt=int(msg["attempt"]),
                            reason=f"slot {slot.slot_id} revoked: {reason}")


@click.command()
@agent_options
def main(node: str, spool: Path, endpoint: str, workdir: Path, grace: float, keep_warm_s: float,
         container_runtime: str, hot_host: Optional[str], cgroups: bool, pids_max: int, allow_root_functions: bool,
         munge_socket: Optional[str], coscheduler_uids: tuple[int, ...], curve_dir: Optional[Path],
         memory_margin: tuple[float, float], memory_hold_down: float, log_file: Optional[str],
         log_level: str) -> None:
    """Run the slurm-faas node agent in the foreground."""
    setup_logging(log_level, log_file)
    hot_host, fabric = agent_addresses(endpoint, hot_host, FabricConfig.from_env())
    agent = Agent(node=node, spool=spool, endpoint=endpoint, workdir=workdir / node, grace_s=grace,
                  keep_warm_s=keep_warm_s, container_runtime=container_runtime, hot_host=hot_host, fabric=fabric,
                  cgroups=cgroups, pids_max=pids_max, allow_root=allow_root_functions, munge_socket=munge_socket,
                  coscheduler_uids=frozenset(coscheduler_uids), curve_dir=curve_dir,
                  memory=GuardConfig(margin_mb=memory_margin[0], margin_percent=memory_margin[1],
                                     hold_down_s=memory_hold_down))

    def request_stop(signum, _frame):
        agent.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent.run()


if __name__ == "__main__":
    main()
