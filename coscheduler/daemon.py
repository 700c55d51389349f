"""faas-coscheduler: the loop that backfills lent capacity with queued invocations.

One ROUTER socket serves agents (one per node) and clients. The loop is a sequence of
small named steps, each with its own database session:

  receive    handle every message that arrived (agents: lends, revokes, results;
             clients: register, invoke, status ...)
  schedule   fit queued invocations to free lent capacity (coscheduler.scheduler.place)
             and send RUN to the agents
  liveness   agents that missed heartbeats are declared dead; their work is requeued
  reconcile  ask Slurm which jobs still run; lends of finished jobs are revoked even when
             the plugin's revoke never arrived

Signal handlers only set the stop flag. Every fact the loop needs survives a restart in
the database; agents re-announce their lends and running work when they see a new
co-scheduler (it answers their heartbeat with ``unknown-agent``).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import click
import zmq
from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P

from . import db as D
from .auth import AuthError, verify_credential
from faas_runtime.logsetup import setup_logging
from .scheduler import PendingInvocation, SlotView, place
from .slurm import SlurmAccess, SlurmError, SqueueJSON
from .states import ON_SLOT, TERMINAL, State

log = logging.getLogger("faas.coscheduler")

# An invocation sent to an agent that the agent does not report as running after this
# long was lost on the way (agent restarted, message dropped): it is requeued.
DISPATCH_GRACE_S = 5.0
QUEUE_WINDOW = 5000  # queued invocations considered per scheduling tick
MAX_PAYLOAD_BYTES = 1 << 20


@dataclass
class AgentConn:
    node: str
    identity: bytes
    last_seen: float  # time.monotonic()


@dataclass
class Config:
    db_url: str
    bind: str
    munge_socket: Optional[str] = None
    tick_s: float = 0.05
    reconcile_s: float = 5.0
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


class RequestFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Coscheduler:
    config: Config
    database: D.Database
    slurm: SlurmAccess
    agents: dict[str, AgentConn] = field(default_factory=dict)
    stop_requested: bool = False
    _last_reconcile: float = 0.0

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = P.configure(self.ctx.socket(zmq.ROUTER))
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted agent reuses its identity
        self.sock.bind(self.config.bind)
        self._outbox: list[tuple[bytes, bytes]] = []

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("co-scheduler listening on %s, database %s", self.config.bind, _safe_url(self.database.url))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop_requested:
            ready = dict(poller.poll(timeout=int(self.config.tick_s * 1000)))
            for step in (self.step_receive if ready else None, self.step_schedule, self.step_liveness,
                         self.step_reconcile):
                if step is not None:
                    self._guarded(step)
        log.info("co-scheduler stopping")
        self.sock.close()
        self.ctx.term()

    def _guarded(self, step: Callable[[], None]) -> None:
        """A failing step is logged and retried next turn; it never kills the daemon."""
        try:
            step()
        except Exception:
            self._outbox.clear()  # its transaction rolled back: send nothing it prepared
            log.exception("step %s failed", step.__name__)
        self._flush()

    def _send(self, identity: bytes, msg_type: str, **fields: Any) -> None:
        # Sent after the step's transaction commits, so nothing goes out for work the
        # database does not hold.
        self._outbox.append((identity, P.encode(msg_type, **fields)))

    def _flush(self) -> None:
        for identity, frame in self._outbox:
            try:
                self.sock.send_multipart([identity, frame], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("could not send to %r: %s", identity, exc)
        self._outbox.clear()

    # -- receive ------------------------------------------------------------------------

    def step_receive(self) -> None:
        for _ in range(1000):  # bounded, so scheduling is never starved
            try:
                identity, frame = self.sock.recv_multipart(flags=zmq.NOBLOCK)[-2:]
            except zmq.Again:
                return
            except ValueError:
                continue  # a message with fewer frames than routing needs
            self.handle(identity, frame)
            self._flush()

    def handle(self, identity: bytes, frame: bytes) -> None:
        rid = None
        mark = len(self._outbox)
        try:
            msg = P.decode(frame)
            rid = msg.get("rid")
            kind = msg["type"]
            if kind in P.AGENT_TYPES:
                self._handle_agent(identity, kind, msg)
            elif kind in P.CLIENT_TYPES:
                reply = self._handle_client(kind, msg)
                self._send(identity, P.OK, rid=rid, **reply)
            else:
                raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")
        except (P.ProtocolError, RequestFailed) as exc:
            del self._outbox[mark:]
            log.info("refused a request: %s: %s", exc.code, exc)
            self._send(identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
        except Exception as exc:
            del self._outbox[mark:]
            log.exception("internal error handling a message")
            self._send(identity, P.ERROR, rid=rid, code=P.E_INTERNAL, message=f"internal error: {exc}")

    # -- agents -------------------------------------------------------------------------

    def _handle_agent(self, identity: bytes, kind: str, msg: dict) -> None:
        node = msg.get("node")
        if not isinstance(node, str) or not node:
            raise P.ProtocolError(P.E_MALFORMED, "agent messages carry a node name")
        if kind == P.HELLO:
            self.agents[node] = AgentConn(node, identity, time.monotonic())
            log.info("agent %s registered", node)
            with self.database.session() as s:
                self._adopt_running(s, node, set(msg.get("running", [])), grace_s=0.0)
            self._send(identity, P.WELCOME, node=node)
            return
        agent = self.agents.get(node)
        if agent is None or agent.identity != identity:
            # A co-scheduler restart or a dead-declared agent: make it say HELLO again.
            self._send(identity, P.ERROR, code=P.E_UNKNOWN_AGENT, message="say hello first", node=node)
            return
        agent.last_seen = time.monotonic()
        with self.database.session() as s:
            if kind == P.HEARTBEAT:
                self._adopt_running(s, node, set(msg.get("running", [])), grace_s=DISPATCH_GRACE_S)
            elif kind == P.LEND:
                self._lend(s, node, msg["record"])
            elif kind == P.REVOKE:
                self._revoke(s, _slot_id(msg["job_id"], node), msg.get("reason", "revoked by the batch job"))
            elif kind == P.STARTED:
                inv = self._inv_on_slot(s, msg)
                if inv is not None and inv.state == State.DISPATCHED.value:
                    D.transition(s, inv, State.RUNNING)
            elif kind == P.RESULT:
                self._result(s, msg)
            elif kind == P.EVICTED:
                inv = self._inv_on_slot(s, msg)
                if inv is not None:
                    D.evict(s, inv, msg.get("reason", "evicted"))

    def _inv_on_slot(self, s: Session, msg: dict) -> Optional[D.Invocation]:
        """The invocation a message is about, if it is still running where the agent says."""
        inv = s.get(D.Invocation, int(msg["invocation_id"]))
        if inv is None or State(inv.state) not in ON_SLOT or inv.attempts != msg.get("attempt", inv.attempts):
            return None  # a late message about an earlier attempt: ignore
        return inv

    def _lend(self, s: Session, node: str, rec: dict) -> None:
        slot_id = _slot_id(rec["job_id"], node)
        slot = s.get(D.Slot, slot_id)
        if slot is not None:
            return  # lends are idempotent; a revoked lend never comes back
        if len(rec["slurm_cpus"]) != len(rec["os_cpus"]) or not rec["slurm_cpus"]:
            raise P.ProtocolError(P.E_MALFORMED, f"lend record {slot_id} has no usable CPUs")
        s.add(D.Slot(
            id=slot_id, job_id=int(rec["job_id"]), node=node, owner_uid=int(rec["uid"]),
            slurm_cpus=list(rec["slurm_cpus"]), os_cpus=list(rec["os_cpus"]), mem_mb=int(rec["mem_mb"]),
            end_time=float(rec["end_time"]) or None, until_min=int(rec.get("until_min", 0)),
        ))
        log.info("slot %s: %d cores (OS CPUs %s), %d MiB", slot_id, len(rec["slurm_cpus"]),
                 sorted(set(rec["os_cpus"])), rec["mem_mb"])

    def _revoke(self, s: Session, slot_id: str, reason: str) -> None:
        slot = s.get(D.Slot, slot_id)
        if slot is None or slot.state == "REVOKED":
            return
        slot.state, slot.revoked_at, slot.revoke_reason = "REVOKED", D.utcnow(), reason
        for inv in D.on_slot(s, [slot_id]):
            D.evict(s, inv, f"slot {slot_id} revoked: {reason}")
        agent = self.agents.get(slot.node)
        if agent is not None:
            # The agent may not know yet (the revoke came from Slurm, not from its spool):
            # it stops what still runs there. Harmless when the agent sent the revoke itself.
            self._send(agent.identity, P.REVOKE, job_id=slot.job_id, node=slot.node, reason=reason)
        log.info("slot %s revoked: %s", slot_id, reason)

    def _result(self, s: Session, msg: dict) -> None:
        inv = self._inv_on_slot(s, msg)
        if inv is None:
            return
        inv.ran_on_cpus = msg.get("cpus")
        outcome = msg.get("outcome")
        if outcome == "ok":
            inv.result = msg.get("value_json", "null")
            D.transition(s, inv, State.SUCCEEDED)
        elif outcome == "timeout":
            inv.error = msg.get("error", "timed out")
            D.transition(s, inv, State.TIMED_OUT, inv.error)
        else:
            inv.error = msg.get("error", "failed")
            D.transition(s, inv, State.FAILED, inv.error)

    def _adopt_running(self, s: Session, node: str, running: set[int], grace_s: float) -> None:
        """Requeue work the database places on ``node`` that its agent does not run."""
        now = D.utcnow()
        for inv in s.scalars(select(D.Invocation).where(
                D.Invocation.node == node, D.Invocation.state.in_([st.value for st in ON_SLOT]))):
            if inv.id in running:
                continue
            age = (now - _aware(inv.dispatched_at)).total_seconds() if inv.dispatched_at else grace_s
            if age >= grace_s:
                D.evict(s, inv, f"agent on {node} does not run it")

    # -- clients ------------------------------------------------------------------------

    def _identity(self, msg: dict) -> int:
        cred = msg.get("cred")
        if not isinstance(cred, str):
            raise RequestFailed(P.E_AUTH, "request carries no munge credential")
        try:
            return verify_credential(cred, P.body_digest(msg), self.config.munge_socket).uid
        except AuthError as exc:
            raise RequestFailed(P.E_AUTH, str(exc)) from None

    def _handle_client(self, kind: str, msg: dict) -> dict:
        if kind == P.PING:
            return {"pong": True}
        if kind == P.AGENTS:
            now = time.monotonic()
            return {"agents": {n: round(now - a.last_seen, 3) for n, a in self.agents.items()}}
        uid = self._identity(msg)
        with self.database.session() as s:
            if kind == P.REGISTER:
                return self._register(s, uid, msg)
            if kind == P.INVOKE:
                return self._invoke(s, uid, msg)
            if kind == P.STATUS:
                return self._status(self._owned(s, uid, msg))
            if kind == P.RESULT_GET:
                return self._result_of(self._owned(s, uid, msg))
            if kind == P.SLOTS:
                return {"slots": [_slot_row(sl) for sl in s.scalars(select(D.Slot).order_by(D.Slot.lent_at))]}
        raise P.ProtocolError(P.E_UNKNOWN_TYPE, kind)

    def _register(self, s: Session, uid: int, msg: dict) -> dict:
        spec = msg.get("function")
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("entrypoint"):
            raise RequestFailed(P.E_INVALID, "register needs a function with a name and an entrypoint")
        fn = s.scalar(select(D.Function).where(D.Function.owner_uid == uid, D.Function.name == spec["name"]))
        if fn is None:
            fn = D.Function(name=spec["name"], owner_uid=uid)
            s.add(fn)
        fn.owner_gid = int(spec.get("gid", uid))
        fn.entrypoint, fn.code_dir = spec["entrypoint"], spec["code_dir"]
        fn.cores, fn.mem_mb = int(spec.get("cores", 1)), int(spec.get("mem_mb", 256))
        fn.timeout_s, fn.max_attempts = float(spec.get("timeout_s", 60)), int(spec.get("max_attempts", 3))
        if fn.cores < 1 or fn.mem_mb < 1 or fn.timeout_s <= 0 or fn.max_attempts < 1:
            raise RequestFailed(P.E_INVALID, "cores, memory, timeout and max attempts must be positive")
        s.flush()
        return {"function_id": fn.id}

    def _invoke(self, s: Session, uid: int, msg: dict) -> dict:
        fn = s.scalar(select(D.Function).where(D.Function.owner_uid == uid, D.Function.name == msg.get("function")))
        if fn is None:
            raise RequestFailed(P.E_NOT_FOUND, f"no function named {msg.get('function')!r} (register it first)")
        payload = msg.get("payload_json", "null")
        if not isinstance(payload, str) or len(payload.encode()) > self.config.max_payload_bytes:
            raise RequestFailed(P.E_INVALID, f"payload must be JSON text of at most {self.config.max_payload_bytes} bytes")
        try:
            json.loads(payload)
        except ValueError as exc:
            raise RequestFailed(P.E_INVALID, f"payload is not JSON: {exc}") from None
        inv = D.add_invocation(s, fn, payload, uid, int(msg.get("priority", 0)))
        return {"invocation_id": inv.id}

    def _owned(self, s: Session, uid: int, msg: dict) -> D.Invocation:
        inv = s.get(D.Invocation, int(msg.get("invocation_id", -1)))
        if inv is None or (inv.owner_uid != uid and uid != 0):
            raise RequestFailed(P.E_NOT_FOUND, f"no invocation {msg.get('invocation_id')} of yours")
        return inv

    @staticmethod
    def _status(inv: D.Invocation) -> dict:
        return {
            "invocation_id": inv.id, "function": inv.function.name, "state": inv.state,
            "attempts": inv.attempts, "node": inv.node, "job_id": inv.job_id,
            "slurm_cpus": inv.slurm_cpus, "os_cpus": inv.os_cpus, "ran_on_cpus": inv.ran_on_cpus,
            "error": inv.error,
            "history": [[e.to_state, _aware(e.at).isoformat(), e.reason] for e in inv.events],
        }

    @staticmethod
    def _result_of(inv: D.Invocation) -> dict:
        if inv.state == State.SUCCEEDED.value:
            return {"state": inv.state, "value_json": inv.result}
        if State(inv.state) in TERMINAL:
            raise RequestFailed(P.E_NOT_FOUND, f"invocation {inv.id} ended {inv.state}: {inv.error}")
        raise RequestFailed(P.E_NOT_READY, f"invocation {inv.id} is {inv.state}; no result yet")

    # -- schedule -----------------------------------------------------------------------

    def step_schedule(self) -> None:
        now = time.time()
        with self.database.session() as s:
            slots = [sl for sl in D.active_slots(s) if sl.node in self.agents]
            if not slots:
                return
            pending = D.queued(s, QUEUE_WINDOW)
            if not pending:
                return
            busy: dict[str, set[int]] = {}
            used_mem: dict[str, int] = {}
            for inv in D.on_slot(s, [sl.id for sl in slots]):
                busy.setdefault(inv.slot_id, set()).update(inv.slurm_cpus or [])
                used_mem[inv.slot_id] = used_mem.get(inv.slot_id, 0) + inv.mem_mb
            views = [
                SlotView(sl.id, [c for c in sl.slurm_cpus if c not in busy.get(sl.id, ())],
                         sl.mem_mb - used_mem.get(sl.id, 0), sl.lend_end)
                for sl in slots
            ]
            by_id = {inv.id: inv for inv in pending}
            requests = [
                PendingInvocation(inv.id, inv.owner_uid, inv.function.name, inv.function.cores,
                                  inv.function.mem_mb, inv.function.timeout_s, inv.priority,
                                  _aware(inv.created_at).timestamp())
                for inv in pending
            ]
            slot_by_id = {sl.id: sl for sl in slots}
            for p in place(requests, views, now):
                inv, slot = by_id[p.invocation_id], slot_by_id[p.slot_id]
                inv.attempts += 1
                inv.slot_id, inv.node, inv.job_id = slot.id, slot.node, slot.job_id
                inv.slurm_cpus, inv.os_cpus = list(p.cpus), slot.os_cpus_of(list(p.cpus))
                inv.mem_mb, inv.dispatched_at = p.mem_mb, D.utcnow()
                D.transition(s, inv, State.DISPATCHED, f"on {slot.id} cores {list(p.cpus)}")
                fn = inv.function
                self._send(self.agents[slot.node].identity, P.RUN, invocation_id=inv.id, attempt=inv.attempts,
                           slot_id=slot.id, job_id=slot.job_id, os_cpus=inv.os_cpus, mem_mb=inv.mem_mb,
                           timeout_s=fn.timeout_s, uid=fn.owner_uid, gid=fn.owner_gid,
                           entrypoint=fn.entrypoint, code_dir=fn.code_dir, payload_json=inv.payload)

    # -- liveness and reconciliation ----------------------------------------------------

    def step_liveness(self) -> None:
        now = time.monotonic()
        dead = [n for n, a in self.agents.items() if now - a.last_seen > P.AGENT_DEAD_AFTER_S]
        if not dead:
            return
        with self.database.session() as s:
            for node in dead:
                log.warning("agent %s missed its heartbeats; requeueing its work", node)
                del self.agents[node]
                for inv in s.scalars(select(D.Invocation).where(
                        D.Invocation.node == node, D.Invocation.state.in_([st.value for st in ON_SLOT]))):
                    D.evict(s, inv, f"agent on {node} stopped answering")

    def step_reconcile(self) -> None:
        if time.monotonic() - self._last_reconcile < self.config.reconcile_s:
            return
        self._last_reconcile = time.monotonic()
        try:
            jobs = self.slurm.jobs()
        except SlurmError as exc:
            log.warning("cannot reconcile with Slurm: %s", exc)
            return
        with self.database.session() as s:
            for slot in D.active_slots(s):
                job = jobs.get(slot.job_id)
                if job is None or not job.alive:
                    self._revoke(s, slot.id, f"job {slot.job_id} is {job.state if job else 'gone'} in Slurm")
                elif slot.end_time is None and job.end_time is not None:
                    slot.end_time = job.end_time


def _slot_id(job_id: Any, node: str) -> str:
    return f"{int(job_id)}@{node}"


def _aware(t: Optional[dt.datetime]) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if t is None:
        return t
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _slot_row(sl: D.Slot) -> dict:
    return {"slot_id": sl.id, "node": sl.node, "job_id": sl.job_id, "slurm_cpus": sl.slurm_cpus,
            "os_cpus": sl.os_cpus, "mem_mb": sl.mem_mb, "end_time": sl.end_time, "state": sl.state,
            "revoke_reason": sl.revoke_reason}


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}"


@click.command()
@click.option("--db", "db_url", envvar="FAAS_DB_URL", required=True, help="SQLAlchemy URL, e.g. sqlite:////var/lib/slurm-faas/faas.db")
@click.option("--bind", envvar="FAAS_COSCHEDULER_BIND", default="tcp://127.0.0.1:7800", show_default=True)
@click.option("--munge-socket", envvar="FAAS_MUNGE_SOCKET", default=None, help="munged socket (default: munge's own)")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--reconcile-interval", type=float, default=5.0, show_default=True, help="seconds between squeue checks")
def main(db_url: str, bind: str, munge_socket: Optional[str], log_file: Optional[str], log_level: str,
         reconcile_interval: float) -> None:
    """Run the slurm-faas co-scheduler in the foreground."""
    setup_logging(log_level, log_file)
    database = D.Database(db_url)
    database.create_schema()
    daemon = Coscheduler(Config(db_url, bind, munge_socket, reconcile_s=reconcile_interval), database, SqueueJSON())

    def request_stop(signum, _frame):
        daemon.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    daemon.run()
    database.dispose()


if __name__ == "__main__":
    main()
