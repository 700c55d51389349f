"""faas-coscheduler: the loop that backfills lent capacity with queued invocations.

One ROUTER socket serves agents (one per node) and clients. The loop is a sequence of
small named steps, each with its own database session (one transaction):

  receive    handle what arrived: agents' messages (lends, revokes, results ...) in one
             transaction, in order: a run of reports (STARTED, RESULT, EVICTED) in bulk
             statements (db.transition_many), every other message in a savepoint of its
             own; each client request in its own transaction, answered after it commits
  schedule   claim queued invocations (one statement: FOR UPDATE SKIP LOCKED on
             PostgreSQL, BEGIN IMMEDIATE on SQLite), fit them to free lent capacity
             (coscheduler.scheduler.place, a pure function), dispatch the placed ones in
             bulk, and send RUN to the agents after the commit; runs when something
             changed, and every second
  liveness   agents that missed heartbeats are declared dead; their work is requeued
  reconcile  ask Slurm which jobs still run; lends of finished jobs are revoked even when
             the plugin's revoke never arrived

Signal handlers only set a flag. On SIGTERM/SIGINT the loop finishes its step, handles
the messages that already arrived (results are bookkept, nothing new is dispatched), sends
what those transactions produced, and exits. Every fact the loop needs survives a
``kill -9`` in the database: RUN goes out only after the transaction that dispatched the
invocation committed; agents re-announce their lends and running work when they see a new
co-scheduler (it answers their heartbeat with ``unknown-agent``), and what a restarted
co-scheduler finds dispatched but not running is requeued after a grace.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import click
import zmq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.logsetup import setup_logging

from . import db as D
from faas_runtime.auth import AuthError, verify_credential
from .config import Config, ConfigError, load as load_config
from .scheduler import Lane, PendingInvocation, Policy, SlotView, place_ahead
from .slurm import JobInfo, SlurmAccess, SlurmError, make_backend
from faas_runtime.states import ALLOWED, ON_SLOT, TERMINAL, State

log = logging.getLogger("faas.coscheduler")

RECEIVE_BATCH = 2000  # messages per receive step, so scheduling is never starved
REPORTS = frozenset({P.STARTED, P.RESULT, P.EVICTED})  # agents' reports on invocations: handled in bulk
CANCELLABLE = [st.value for st, then in ALLOWED.items() if State.CANCELLED in then]  # queued or on a slot
SCHEDULE_EVERY_S = 1.0  # a scheduling pass even when nothing announced a change
# While agents hold work dispatched ahead, the loop runs at most this often: each pass
# then claims, places and commits many invocations at once (a pass costs a few database
# round trips whatever it places). Idle slots are scheduled at once, as before.
PIPELINED_GAP_S = 0.01
RUN_TIME_WEIGHT = 0.2  # of the newest report in a function's moving-average run time
WARM_FOR_S = 30.0  # a slot that ran a function this recently probably holds a warm executor
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MAX_USER_PRIORITY = 10  # priority classes above this are root's (operators' urgent work)
RUNTIMES = ("none", "charliecloud", "apptainer", "singularity", "sarus", "bwrap")
FUNCTION_FIELDS = ("entrypoint", "code_dir", "cores", "mem_mb", "timeout_s", "max_attempts", "image", "runtime", "gid")


@dataclass
class AgentConn:
    node: str
    identity: bytes
    last_seen: float  # time.monotonic()


class RequestFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Coscheduler:
    def __init__(self, config: Config, database: D.Database, slurm: SlurmAccess,
                 verify: Optional[Callable[[str, str], int]] = None):
        self.config = config
        self.database = database
        self.slurm = slurm
        # Who sent a request: the uid a munge credential proves (replaceable in tests).
        self.verify = verify or (lambda cred, digest: verify_credential(cred, digest, config.munge_socket).uid)
        self.agents: dict[str, AgentConn] = {}
        self.stop_requested = False
        self._last_reconcile = 0.0
        self._slurm_worker: Optional[ThreadPoolExecutor] = None
        self._slurm_answer: Optional[Future] = None  # a question to Slurm under way
        self._dirty = True  # something changed that may let work be placed
        self._next_schedule = 0.0
        self._last_schedule = 0.0
        self._pipelined = False  # the last scheduling pass dispatched work ahead
        self._warm: dict[str, dict[str, float]] = {}  # slot id -> function key -> monotonic time
        # Recent run time of each function key: moving average of what agents report
        # (dispatch-ahead, see _ahead_depth).
        self._run_time: dict[str, float] = {}
        self._outbox: list[tuple[bytes, bytes]] = []
        # Extension points for other request kinds (e.g. coscheduler.leases): type -> handler.
        self.agent_handlers: dict[str, Callable[[Session, bytes, dict], None]] = {}
        self.client_handlers: dict[str, Callable[[Session, int, dict], dict]] = {}
        from .leases import install as install_leases  # hot invocations (issue 5)

        install_leases(self)
        self.ctx = zmq.Context()
        self.sock = P.configure(self.ctx.socket(zmq.ROUTER))
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted agent reuses its identity
        from faas_runtime import curve  # CurveZMQ when FAAS_CURVE_DIR names the keys (issue 5)

        self.curve = curve.CurveServer(self.ctx, self.sock, curve.directory()) if curve.directory() else None
        self.sock.bind(self.config.bind)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("co-scheduler listening on %s, database %s (revision %s)", self.config.bind,
                 _safe_url(self.database.url), self.database.revision())
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop_requested:
            if self._pipelined:
                # Agents hold work dispatched ahead: no core idles while the loop waits, so
                # let reports and requests gather and take them in one transaction each.
                time.sleep(max(0.0, self._last_schedule + PIPELINED_GAP_S - time.monotonic()))
            ready = dict(poller.poll(timeout=0 if self._pipelined else int(self.config.tick_s * 1000)))
            if ready:
                self._guarded(self.step_receive)
            for step in (self.step_schedule, self.step_liveness, self.step_reconcile):
                if self.stop_requested:
                    break
                self._guarded(step)
        self.shutdown()

    def shutdown(self) -> None:
        """Finish the bookkeeping of what already arrived, send its replies, close."""
        log.info("co-scheduler stopping: handling the messages already received")
        self._guarded(self.step_receive)
        if self._slurm_worker is not None:
            self._slurm_worker.shutdown(wait=False, cancel_futures=True)
        self.sock.close()
        if self.curve is not None:
            self.curve.stop()
        self.ctx.term()
        log.info("co-scheduler stopped")

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
        agent_msgs: list[tuple[bytes, dict]] = []
        for _ in range(RECEIVE_BATCH):
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=self.curve is None)
            except zmq.Again:
                break
            if len(parts) < 2:
                continue  # a message with fewer frames than routing needs
            identity, frame = parts[-2:]
            if self.curve is not None:  # frames, with the peer's CurveZMQ name as metadata
                meta, identity, frame = frame, identity.bytes, frame.bytes
            rid = None
            try:
                msg = P.decode(frame)
                rid = msg.get("rid")
                kind = msg["type"]
                if kind in P.AGENT_TYPES and self.curve is not None and self.curve.check_agent(meta, msg.get("node")):
                    raise P.ProtocolError(P.E_AUTH, self.curve.check_agent(meta, msg.get("node")))
                if kind in P.AGENT_TYPES:
                    agent_msgs.append((identity, msg))
                elif kind in P.CLIENT_TYPES or kind in self.client_handlers:
                    self._client_request(identity, kind, msg)
                else:
                    raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")
            except P.ProtocolError as exc:
                log.info("refused a message: %s: %s", exc.code, exc)
                self._send(identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
        if agent_msgs:
            self._agent_batch(agent_msgs)

    def _client_request(self, identity: bytes, kind: str, msg: dict) -> None:
        """One request, one transaction; the reply goes out after the commit."""
        rid = msg.get("rid")
        try:
            reply = self._handle_client(kind, msg)
        except (P.ProtocolError, RequestFailed) as exc:
            log.info("refused a %s request: %s: %s", kind, exc.code, exc)
            self._send(identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("internal error handling a %s request", kind)
            self._send(identity, P.ERROR, rid=rid, code=P.E_INTERNAL, message=f"internal error: {exc}")
        else:
            self._send(identity, P.OK, rid=rid, **reply)
        self._flush()

    def _agent_batch(self, msgs: list[tuple[bytes, dict]]) -> None:
        """Agents' messages in one transaction (a burst of results costs one commit), in the
        order they arrived: each run of reports in bulk (``_reports``), every other message
        in a savepoint of its own, so that a bad one is refused alone."""
        with self.database.session(write=True) as s:
            run: list[tuple[bytes, dict]] = []
            for identity, msg in msgs:
                if msg["type"] in REPORTS and msg["type"] not in self.agent_handlers:
                    run.append((identity, msg))
                    continue
                if run:
                    self._reports(s, run)
                    run = []
                self._agent_message(s, identity, msg)
            if run:
                self._reports(s, run)

    def _agent_message(self, s: Session, identity: bytes, msg: dict) -> None:
        mark = len(self._outbox)
        try:
            with s.begin_nested():
                self._handle_agent(s, identity, msg["type"], msg)
        except P.ProtocolError as exc:
            del self._outbox[mark:]
            log.info("refused an agent message: %s: %s", exc.code, exc)
            self._send(identity, P.ERROR, code=exc.code, message=str(exc))
        except Exception as exc:
            del self._outbox[mark:]
            log.exception("internal error handling a %s message", msg.get("type"))
            self._send(identity, P.ERROR, code=P.E_INTERNAL, message=f"internal error: {exc}")

    # -- agents -------------------------------------------------------------------------

    @staticmethod
    def _node_of(msg: dict) -> str:
        node = msg.get("node")
        if not isinstance(node, str) or not node:
            raise P.ProtocolError(P.E_MALFORMED, "agent messages carry a node name")
        return node

    def _known_agent(self, identity: bytes, node: str) -> bool:
        """Whether ``node``'s agent said HELLO from this socket; if not, tell it to."""
        agent = self.agents.get(node)
        if agent is None or agent.identity != identity:
            # A co-scheduler restart or a dead-declared agent: make it say HELLO again.
            self._send(identity, P.ERROR, code=P.E_UNKNOWN_AGENT, message="say hello first", node=node)
            return False
        agent.last_seen = time.monotonic()
        return True

    def _handle_agent(self, s: Session, identity: bytes, kind: str, msg: dict) -> None:
        node = self._node_of(msg)
        if kind == P.HELLO:
            self.agents[node] = AgentConn(node, identity, time.monotonic())
            log.info("agent %s registered", node)
            # A repeated HELLO may cross a RUN sent a moment ago: only work dispatched
            # longer ago than the grace is known lost (a restarted agent's old work is).
            self._adopt_running(s, node, set(msg.get("running", [])), grace_s=self.config.dispatch_grace_s)
            self._send(identity, P.WELCOME, node=node)
            self._dirty = True
            return
        if not self._known_agent(identity, node):
            return
        if kind in self.agent_handlers:
            self.agent_handlers[kind](s, identity, msg)
        elif kind == P.HEARTBEAT:
            self._adopt_running(s, node, set(msg.get("running", [])), grace_s=self.config.dispatch_grace_s)
            self._note_warm(msg.get("warm"))
        elif kind == P.LEND:
            self._lend(s, node, msg.get("record"))
        elif kind == P.REVOKE:
            self._revoke(s, _slot_id(msg.get("job_id"), node), str(msg.get("reason", "revoked by the batch job")))
        elif kind in REPORTS:
            self._reports(s, [(identity, msg)])

    def _reports(self, s: Session, msgs: list[tuple[bytes, dict]]) -> None:
        """STARTED, RESULT and EVICTED reports, in bulk: one read of the invocations they
        are about, then their state changes in order, written by ``db.transition_many``.
        Reports of another attempt than the current one, or about an invocation no longer
        on a slot (cancelled, requeued), are ignored. If the bulk write fails, each report
        is tried alone in a savepoint, so that one bad report is refused alone."""
        valid: list[tuple[bytes, int, dict]] = []
        for identity, msg in msgs:
            try:
                if not self._known_agent(identity, self._node_of(msg)):
                    continue
                try:
                    inv_id = int(msg["invocation_id"])
                except (KeyError, TypeError, ValueError):
                    raise P.ProtocolError(P.E_MALFORMED, "invocation_id missing or not a number") from None
            except P.ProtocolError as exc:
                log.info("refused an agent message: %s: %s", exc.code, exc)
                self._send(identity, P.ERROR, code=exc.code, message=str(exc))
                continue
            valid.append((identity, inv_id, msg))
        if not valid:
            return
        try:
            with s.begin_nested():
                self._apply_reports(s, valid)
            return
        except Exception:
            if len(valid) == 1:
                identity, _, msg = valid[0]
                log.exception("internal error handling a %s message", msg.get("type"))
                self._send(identity, P.ERROR, code=P.E_INTERNAL, message="internal error handling the report")
                return
            log.exception("a batch of %d reports failed; handling them one by one", len(valid))
        for item in valid:
            self._reports(s, [(item[0], item[2])])

    def _apply_reports(self, s: Session, items: list[tuple[bytes, int, dict]]) -> None:
        rows = D.report_rows(s, {inv_id for _, inv_id, _ in items})
        changes: list[D.Change] = []
        mono = time.monotonic()
        for _, inv_id, msg in items:
            row = rows.get(inv_id)
            if row is None or row.state not in ON_SLOT or row.attempts != msg.get("attempt", row.attempts):
                continue  # a late message about an earlier attempt, or a cancelled one: ignore
            kind, now = msg["type"], D.utcnow()
            if kind == P.STARTED:
                if row.state is State.DISPATCHED:
                    changes.append(D.Change(inv_id, row.state, State.RUNNING, now))
                    row.state = State.RUNNING
            elif kind == P.RESULT:
                self._dirty = True
                if row.slot_id:
                    self._warm.setdefault(row.slot_id, {})[_fn_key(row.function_id)] = mono
                self._note_run_time(_fn_key(row.function_id), msg.get("run_s"))
                values: dict[str, Any] = {"ran_on_cpus": msg.get("cpus")}
                outcome, reason = msg.get("outcome"), None
                if outcome == "ok":
                    new, values["result"] = State.SUCCEEDED, msg.get("value_json") or "null"
                else:
                    new = State.TIMED_OUT if outcome == "timeout" else State.FAILED
                    values["error"] = str(msg.get("error") or ("timed out" if outcome == "timeout" else "failed"))
                    reason = values["error"][:1000]
                changes.append(D.Change(inv_id, row.state, new, now, reason, values))
                row.state = new
            else:  # EVICTED
                self._dirty = True
                changes.extend(D.eviction_changes(row, str(msg.get("reason", "evicted")), now,
                                                  unstarted=msg.get("unstarted") is True))
        D.transition_many(s, changes)

    def _note_run_time(self, fn: str, run_s: Any) -> None:
        if isinstance(run_s, bool) or not isinstance(run_s, (int, float)) or not run_s >= 0:
            return  # an agent that does not report it: the function is never dispatched ahead
        avg = self._run_time.get(fn)
        self._run_time[fn] = run_s if avg is None else avg + RUN_TIME_WEIGHT * (run_s - avg)

    def _ahead_depth(self) -> dict[str, int]:
        """How many invocations of each function may wait per lent core: as many as fit in
        ``dispatch_ahead_s`` of its recent mean run time, at most ``dispatch_ahead_max``;
        none for a function never seen or slower than that."""
        cap, budget = self.config.dispatch_ahead_max, self.config.dispatch_ahead_s
        if not cap:
            return {}
        out = {}
        for fn, run_s in self._run_time.items():
            n = min(cap, int(budget / max(run_s, 1e-6)))
            if n:
                out[fn] = n
        return out

    def _lend(self, s: Session, node: str, rec: Any) -> None:
        try:
            slot_id = _slot_id(rec["job_id"], node)
            cpus, os_cpus = list(rec["slurm_cpus"]), list(rec["os_cpus"])
            mem_mb, uid = int(rec["mem_mb"]), int(rec["uid"])
            end_time = float(rec.get("end_time") or 0) or None
            until = int(rec.get("until_min", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise P.ProtocolError(P.E_MALFORMED, f"lend record is malformed: {exc!r}") from None
        if s.get(D.Slot, slot_id) is not None:
            return  # lends are idempotent; a revoked lend never comes back
        if len(cpus) != len(os_cpus) or not cpus:
            raise P.ProtocolError(P.E_MALFORMED, f"lend record {slot_id} has no usable CPUs")
        s.add(D.Slot(id=slot_id, job_id=int(rec["job_id"]), node=node, owner_uid=uid, slurm_cpus=cpus,
                     os_cpus=os_cpus, mem_mb=mem_mb, end_time=end_time, until_min=until))
        self._dirty = True
        log.info("slot %s: %d cores (OS CPUs %s), %d MiB", slot_id, len(cpus), sorted(set(os_cpus)), mem_mb)

    def _revoke(self, s: Session, slot_id: str, reason: str) -> None:
        slot = s.get(D.Slot, slot_id)
        if slot is None or slot.state == "REVOKED":
            return
        slot.state, slot.revoked_at, slot.revoke_reason = "REVOKED", D.utcnow(), reason
        for inv in D.on_slot(s, [slot_id]):
            D.evict(s, inv, f"slot {slot_id} revoked: {reason}")
        self._warm.pop(slot_id, None)
        self.leases.slot_revoked(slot_id, reason)
        self._dirty = True
        agent = self.agents.get(slot.node)
        if agent is not None:
            # The agent may not know yet (the revoke came from Slurm, not from its spool):
            # it stops what still runs there. Harmless when the agent sent the revoke itself.
            self._send(agent.identity, P.REVOKE, job_id=slot.job_id, node=slot.node, reason=reason)
        log.info("slot %s revoked: %s", slot_id, reason)

    def _note_warm(self, warm: Any) -> None:
        """Optional heartbeat field ``warm``: {slot_id: [function ids with an idle executor]}."""
        if not isinstance(warm, dict):
            return
        now = time.monotonic()
        for slot_id, fns in warm.items():
            if isinstance(fns, list):
                entry = self._warm.setdefault(str(slot_id), {})
                for fn in fns:
                    entry[_fn_key(fn)] = now

    def _adopt_running(self, s: Session, node: str, running: set[int], grace_s: float) -> None:
        """Requeue work the database places on ``node`` that its agent does not run."""
        now = D.utcnow()
        for inv in s.scalars(select(D.Invocation).where(
                D.Invocation.node == node, D.Invocation.state.in_([st.value for st in ON_SLOT]))):
            if inv.id in running:
                continue
            age = (now - inv.dispatched_at).total_seconds() if inv.dispatched_at else grace_s
            if age >= grace_s:
                D.evict(s, inv, f"agent on {node} does not run it")
                self._dirty = True

    # -- clients ------------------------------------------------------------------------

    def _identity(self, msg: dict) -> int:
        cred = msg.get("cred")
        if not isinstance(cred, str):
            raise RequestFailed(P.E_AUTH, "request carries no munge credential")
        try:
            return self.verify(cred, P.body_digest(msg))
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
            if kind in self.client_handlers:
                return self.client_handlers[kind](s, uid, msg)
            if kind == P.REGISTER:
                return self._register(s, uid, msg)
            if kind == P.FUNCTION_UPDATE:
                return self._update_function(s, uid, msg)
            if kind == P.FUNCTIONS:
                q = select(D.Function).where(D.Function.owner_uid == uid, D.Function.deleted_at.is_(None))
                return {"functions": [_fn_row(fn) for fn in s.scalars(q.order_by(D.Function.name))]}
            if kind == P.FUNCTION_SHOW:
                fn = self._function(s, uid, msg.get("name"))
                counts = dict(s.execute(select(D.Invocation.state, func.count())
                                        .where(D.Invocation.function_id == fn.id).group_by(D.Invocation.state)).all())
                return {"function": {**_fn_row(fn), "invocations": counts}}
            if kind == P.FUNCTION_DELETE:
                return self._delete_function(s, uid, msg)
            if kind == P.INVOKE:
                return {"invocation_id": self._invoke(s, uid, msg.get("function"), [msg.get("payload_json", "null")],
                                                      msg.get("priority", 0))[0]}
            if kind == P.INVOKE_BATCH:
                payloads = msg.get("payloads")
                if "check_count" in msg:
                    self._invoke(s, uid, msg.get("function"), [], msg.get("priority", 0), msg["check_count"])
                    return {"max_payload_bytes": self.config.max_payload_bytes, "max_batch": self.config.max_batch}
                if not isinstance(payloads, list) or not payloads:
                    raise RequestFailed(P.E_INVALID, "a batch carries a non-empty list of payloads")
                return {"invocation_ids": self._invoke(s, uid, msg.get("function"), payloads, msg.get("priority", 0))}
            if kind == P.STATUS:
                return self._status(self._owned(s, uid, msg))
            if kind == P.RESULT_GET:
                return self._result_of(self._owned(s, uid, msg))
            if kind == P.CANCEL_INVOCATION:
                return self._cancel(s, self._owned(s, uid, msg))
            if kind == P.CANCEL_FUNCTION:
                return self._cancel_function(s, self._function(s, uid, msg.get("function")))
            if kind == P.LIST:
                return self._list(s, uid, msg)
            if kind == P.SLOTS:
                return {"slots": [_slot_row(sl) for sl in s.scalars(select(D.Slot).order_by(D.Slot.lent_at))]}
        raise P.ProtocolError(P.E_UNKNOWN_TYPE, kind)

    def _function(self, s: Session, uid: int, name: Any) -> D.Function:
        fn = D.function_named(s, uid, name) if isinstance(name, str) else None
        if fn is None:
            raise RequestFailed(P.E_NOT_FOUND, f"no function named {name!r} (register it first)")
        return fn

    def _apply_function_fields(self, fn: D.Function, spec: dict) -> None:
        try:
            for key in FUNCTION_FIELDS:
                if key not in spec or spec[key] is None and key not in ("image", "runtime"):
                    continue
                value = spec[key]
                if key in ("cores", "mem_mb", "max_attempts"):
                    value = int(value)
                elif key == "timeout_s":
                    value = float(value)
                elif key == "gid":
                    fn.owner_gid = int(value)
                    continue
                elif value is not None:
                    value = str(value)
                setattr(fn, key, value)
        except (TypeError, ValueError) as exc:
            raise RequestFailed(P.E_INVALID, f"bad function field: {exc}") from None
        if not fn.entrypoint or ":" not in fn.entrypoint:
            raise RequestFailed(P.E_INVALID, "the entrypoint is module:function or path/lib.so:symbol")
        if not fn.code_dir:
            raise RequestFailed(P.E_INVALID, "a function needs a code directory")
        if fn.cores < 1 or fn.mem_mb < 1 or not fn.timeout_s > 0 or fn.max_attempts < 1:
            raise RequestFailed(P.E_INVALID, "cores, memory, timeout and max attempts must be positive")
        if fn.runtime is not None and fn.runtime not in RUNTIMES:
            raise RequestFailed(P.E_INVALID, f"runtime must be one of {', '.join(RUNTIMES)}")
        fn.updated_at = D.utcnow()

    def _register(self, s: Session, uid: int, msg: dict) -> dict:
        spec = msg.get("function")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec.get("entrypoint"):
            raise RequestFailed(P.E_INVALID, "register needs a function with a name and an entrypoint")
        if not NAME_RE.fullmatch(spec["name"]):
            raise RequestFailed(P.E_INVALID, f"bad function name {spec['name']!r}: letters, digits, _ . - "
                                             "(up to 100, not starting with a punctuation mark)")
        fn = D.function_named(s, uid, spec["name"])
        if fn is None:
            fn = D.Function(name=spec["name"], owner_uid=uid, owner_gid=uid, cores=1, mem_mb=256, timeout_s=60.0,
                            max_attempts=3, entrypoint="", code_dir="")
            s.add(fn)
        elif spec.get("create_only"):
            raise RequestFailed(P.E_EXISTS, f"function {spec['name']!r} exists; use update")
        self._apply_function_fields(fn, {**{"image": None, "runtime": None}, **spec})
        s.flush()
        return {"function_id": fn.id}

    def _update_function(self, s: Session, uid: int, msg: dict) -> dict:
        fn = self._function(s, uid, msg.get("name"))
        changes = msg.get("function")
        if not isinstance(changes, dict) or not changes:
            raise RequestFailed(P.E_INVALID, "update needs at least one field to change")
        self._apply_function_fields(fn, changes)
        s.flush()
        return {"function": _fn_row(fn)}

    def _delete_function(self, s: Session, uid: int, msg: dict) -> dict:
        fn = self._function(s, uid, msg.get("name"))
        active = list(s.scalars(select(D.Invocation).where(D.Invocation.function_id == fn.id,
                                                            D.Invocation.state.in_(D.ACTIVE_STATES))))
        if active and not msg.get("force"):
            raise RequestFailed(P.E_INVALID, f"function {fn.name!r} has {len(active)} queued or running "
                                             "invocations; cancel them or delete with --force")
        for inv in active:
            self._cancel(s, inv, f"function {fn.name} deleted")
        name = fn.name
        # The row stays for the history of its invocations, under a name no one can register.
        fn.deleted_at = D.utcnow()
        fn.name = f"{name}#deleted-{fn.id}"
        return {"deleted": name, "cancelled": len(active)}

    def _invoke(self, s: Session, uid: int, name: Any, payloads: list, priority: Any,
                check_count: Any = None) -> list[int]:
        """Queue ``payloads`` (all or none); with ``check_count``, only check that that many
        would be accepted (function, priority, quota) and write nothing."""
        fn = self._function(s, uid, name)
        if len(payloads) > self.config.max_batch:
            raise RequestFailed(P.E_INVALID, f"a batch holds at most {self.config.max_batch} invocations, "
                                             f"not {len(payloads)}")
        try:
            priority = int(priority)
        except (TypeError, ValueError):
            raise RequestFailed(P.E_INVALID, f"priority must be a whole number, not {priority!r}") from None
        if uid != 0 and priority > MAX_USER_PRIORITY:
            raise RequestFailed(P.E_INVALID, f"priority {priority} is above {MAX_USER_PRIORITY}, the highest "
                                             "class users may ask for (root may ask for more)")
        many = len(payloads) > 1
        for n, payload in enumerate(payloads):
            where = f"invocation {n + 1} of the batch: " if many else ""
            if not isinstance(payload, str) or len(payload.encode()) > self.config.max_payload_bytes:
                raise RequestFailed(P.E_INVALID, f"{where}payload must be JSON text of at most "
                                                 f"{self.config.max_payload_bytes} bytes")
            try:
                json.loads(payload)
            except ValueError as exc:
                raise RequestFailed(P.E_INVALID, f"{where}payload is not JSON: {exc}") from None
        try:
            adding = len(payloads) if check_count is None else int(check_count)
        except (TypeError, ValueError):
            raise RequestFailed(P.E_INVALID, f"check_count must be a number, not {check_count!r}") from None
        quota = self.config.quota(uid)
        if quota.max_queued is not None:
            active = sum(D.user_counts(s, uid).values())
            if active + adding > quota.max_queued:
                raise RequestFailed(P.E_QUOTA, f"quota exceeded: uid {uid} may have at most {quota.max_queued} "
                                               f"queued or running invocations; {active} are, and this request "
                                               f"adds {adding}")
        if check_count is not None:
            return []
        ids = D.add_invocations(s, fn, payloads, uid, priority)
        self._dirty = True
        return ids

    def _owned(self, s: Session, uid: int, msg: dict) -> D.Invocation:
        try:
            inv = s.get(D.Invocation, int(msg.get("invocation_id", -1)))
        except (TypeError, ValueError):
            inv = None
        if inv is None or (inv.owner_uid != uid and uid != 0):
            raise RequestFailed(P.E_NOT_FOUND, f"no invocation {msg.get('invocation_id')} of yours")
        return inv

    def _cancel(self, s: Session, inv: D.Invocation, reason: str = "cancelled by its owner") -> dict:
        if State(inv.state) in TERMINAL:
            raise RequestFailed(P.E_INVALID, f"invocation {inv.id} already ended {inv.state}")
        node, attempt = inv.node, inv.attempts
        if D.cancel(s, inv, reason):
            self._stop_on_agent(node, inv.id, attempt, reason)
        return {"invocation_id": inv.id, "state": inv.state}

    def _cancel_function(self, s: Session, fn: D.Function, reason: str = "cancelled by its owner") -> dict:
        """Every unfinished invocation of ``fn``, in bulk (a user's 100,000 queued ones
        take one request); agents stop those on their slots."""
        rows = s.execute(select(D.Invocation.id, D.Invocation.state, D.Invocation.node, D.Invocation.attempts)
                         .where(D.Invocation.function_id == fn.id, D.Invocation.state.in_(CANCELLABLE))).all()
        at = D.utcnow()
        D.transition_many(s, [D.Change(r.id, State(r.state), State.CANCELLED, at, reason) for r in rows])
        for r in rows:
            if State(r.state) in ON_SLOT:
                self._stop_on_agent(r.node, r.id, r.attempts, reason)
        self._dirty = True
        return {"cancelled": len(rows)}

    def _stop_on_agent(self, node: Optional[str], inv_id: int, attempt: int, reason: str) -> None:
        """A cancelled invocation that was on a slot: its agent stops it (sent after commit)."""
        agent = self.agents.get(node or "")
        if agent is not None:
            self._send(agent.identity, P.CANCEL, invocation_id=inv_id, attempt=attempt, reason=reason)
        self._dirty = True

    def _list(self, s: Session, uid: int, msg: dict) -> dict:
        inv_t = D.Invocation  # columns only: a listing never loads payloads or results
        q = select(inv_t.id, D.Function.name, inv_t.state, inv_t.attempts, inv_t.priority, inv_t.node,
                   inv_t.job_id, inv_t.created_at, inv_t.updated_at, inv_t.error
                   ).join(D.Function, inv_t.function_id == D.Function.id)
        if uid != 0 or not msg.get("all_users"):
            q = q.where(D.Invocation.owner_uid == uid)
        states = msg.get("states")
        if states:
            bad = [st for st in states if st not in State.__members__]
            if bad:
                raise RequestFailed(P.E_INVALID, f"unknown state {bad[0]!r}")
            q = q.where(D.Invocation.state.in_(states))
        if msg.get("function"):
            fn = self._function(s, uid, msg["function"])
            q = q.where(D.Invocation.function_id == fn.id)
        if msg.get("ids"):
            q = q.where(D.Invocation.id.in_([int(i) for i in msg["ids"]]))
        limit = max(1, min(int(msg.get("limit") or 100), 100_000))
        rows = s.execute(q.order_by(D.Invocation.id.desc()).limit(limit)).all()
        return {"invocations": [
            {"invocation_id": r.id, "function": r.name.split("#deleted-")[0], "state": r.state,
             "attempts": r.attempts, "priority": r.priority, "node": r.node, "job_id": r.job_id,
             "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
             "error": r.error} for r in rows]}

    @staticmethod
    def _status(inv: D.Invocation) -> dict:
        return {
            "invocation_id": inv.id, "function": inv.function.name.split("#deleted-")[0], "state": inv.state,
            "attempts": inv.attempts, "node": inv.node, "job_id": inv.job_id,
            "slurm_cpus": inv.slurm_cpus, "os_cpus": inv.os_cpus, "ran_on_cpus": inv.ran_on_cpus,
            "error": inv.error, "priority": inv.priority,
            "history": [[e.to_state, e.at.isoformat(), e.reason] for e in inv.events],
        }

    @staticmethod
    def _result_of(inv: D.Invocation) -> dict:
        if inv.state == State.SUCCEEDED.value:
            return {"state": inv.state, "value_json": inv.result}
        if State(inv.state) in TERMINAL:
            raise RequestFailed(P.E_NOT_FOUND, f"invocation {inv.id} ended {inv.state}: {inv.error}")
        raise RequestFailed(P.E_NOT_READY, f"invocation {inv.id} is {inv.state}; no result yet")

    # -- schedule -----------------------------------------------------------------------

    def _policy(self) -> Policy:
        cfg = self.config
        return Policy(max_running=cfg.max_running,
                      user_max_running={u: q.max_running for u, q in cfg.user_quotas.items()
                                        if q.max_running is not None},
                      shares=cfg.shares)

    def _warm_on(self, slot_id: str, now: float) -> frozenset[str]:
        entry = self._warm.get(slot_id)
        if not entry:
            return frozenset()
        for key in [k for k, t in entry.items() if now - t > WARM_FOR_S]:
            del entry[key]
        return frozenset(entry)

    def step_schedule(self) -> None:
        mono = time.monotonic()
        if not self._dirty and mono < self._next_schedule:
            return
        self._last_schedule = mono
        self._pipelined = False
        self._dirty = False
        self._next_schedule = mono + SCHEDULE_EVERY_S
        now = time.time()
        with self.database.session(write=True) as s:
            slots = [sl for sl in D.active_slots(s) if sl.node in self.agents]
            if not slots:
                return
            # Per lent core in use, its lane (scheduler.Lane): the invocations on it
            # (running, or dispatched ahead and waiting at the agent), the work expected of
            # them and the most memory one holds per core. Only one runs on a core at a
            # time: the slot's memory in use is at most the sum of its lanes' memory.
            lanes: dict[str, dict[int, Lane]] = {}
            for slot_id, cpus, mem_mb, function_id, timeout_s in D.slot_usage(s, [sl.id for sl in slots]):
                slot_lanes = lanes.setdefault(slot_id, {})
                expected = self._run_time.get(_fn_key(function_id), timeout_s)
                for c in cpus or ():
                    n, backlog, lane_mem = slot_lanes.get(c, (0, 0.0, 0.0))
                    slot_lanes[c] = Lane(n + 1, backlog + expected, max(lane_mem, mem_mb / len(cpus)))
            busy = {slot_id: set(slot_lanes) for slot_id, slot_lanes in lanes.items()}
            used_mem = {slot_id: math.ceil(sum(lane.mem_mb for lane in slot_lanes.values()))
                        for slot_id, slot_lanes in lanes.items()}
            self.leases.reserve(busy, used_mem)  # cores and memory leased to hot clients
            depth = self._ahead_depth()
            deepest = max(depth.values(), default=0)
            views = []
            for sl in slots:
                slot_lanes = lanes.get(sl.id, {})
                free_cpus = [c for c in sl.slurm_cpus if c not in busy.get(sl.id, ())]
                # Only lanes take work dispatched ahead (a core leased to a hot client has none).
                ahead = {c: lane for c, lane in slot_lanes.items() if lane.count <= deepest}
                views.append(SlotView(sl.id, free_cpus, sl.mem_mb - used_mem.get(sl.id, 0), sl.lend_end,
                                      self._warm_on(sl.id, mono), ahead))
            free = sum(len(v.free_cpus) for v in views)
            # room for invocations: a free core takes one to run and `deepest` to wait
            room = free * (1 + deepest) + sum(deepest + 1 - lane.count for v in views for lane in v.queued.values())
            if not room:
                return
            # Claim no more of each (priority, user) than the free cores (and the room to
            # dispatch ahead) could take, and as many again for those that fit nowhere
            # (passed over): a tick that places 64 does not read a thousand.
            per_user = min(self.config.user_window, 2 * room)
            pending = D.claim_queued_rows(s, self.config.queue_window, per_user)
            if not pending:
                return
            fns = D.functions_by_id(s, {r.function_id for r in pending})
            by_id = {r.id: r for r in pending}
            requests = [
                PendingInvocation(r.id, r.owner_uid, _fn_key(r.function_id), fns[r.function_id].cores,
                                  fns[r.function_id].mem_mb, fns[r.function_id].timeout_s, r.priority,
                                  r.created_at.timestamp())
                for r in pending
            ]
            slot_by_id = {sl.id: sl for sl in slots}
            placements = place_ahead(requests, views, now, D.on_slot_by_user(s), self._policy(), depth,
                                     self._run_time)

            if not placements:
                return
            payload = D.payloads(s, [p.invocation_id for p in placements])
            at = D.utcnow()
            changes, runs = [], []
            for p in placements:
                row, slot = by_id[p.invocation_id], slot_by_id[p.slot_id]
                fn, cpus = fns[row.function_id], list(p.cpus)
                os_cpus = slot.os_cpus_of(cpus)
                changes.append(D.Change(row.id, State.QUEUED, State.DISPATCHED, at, f"on {slot.id} cores {cpus}", {
                    "attempts": row.attempts + 1, "slot_id": slot.id, "node": slot.node, "job_id": slot.job_id,
                    "slurm_cpus": cpus, "os_cpus": os_cpus, "mem_mb": p.mem_mb, "dispatched_at": at}))
                runs.append((self.agents[slot.node].identity, dict(
                    invocation_id=row.id, attempt=row.attempts + 1, slot_id=slot.id, job_id=slot.job_id,
                    cpus=cpus, os_cpus=os_cpus, mem_mb=p.mem_mb, timeout_s=fn.timeout_s, uid=fn.owner_uid, gid=fn.owner_gid,
                    function_id=fn.id, entrypoint=fn.entrypoint, code_dir=fn.code_dir, image=fn.image,
                    runtime=fn.runtime, payload_json=payload[row.id])))
            D.transition_many(s, changes)
            for identity, fields in runs:  # sent after this transaction commits (_guarded)
                self._send(identity, P.RUN, **fields)
            free_cores = {(v.slot_id, c) for v in views for c in v.free_cpus}
            self._pipelined = any((p.slot_id, c) not in free_cores for p in placements for c in p.cpus)
            if len(placements) == len(pending):
                self._dirty = True  # the window was used up: there may be more to place now

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
        self._dirty = True

    def step_reconcile(self) -> None:
        """Every ``reconcile_s``: ask Slurm about the jobs that lend (in a worker thread: a
        slow squeue on a big cluster must not stall dispatching), then, once the answer is
        there, revoke the lends of jobs that no longer run."""
        if self._slurm_answer is not None:
            if not self._slurm_answer.done():
                return
            answer, self._slurm_answer = self._slurm_answer, None
            try:
                jobs = answer.result()
            except SlurmError as exc:
                log.warning("cannot reconcile with Slurm: %s", exc)
                return
            self._apply_slurm(jobs)
            return
        if time.monotonic() - self._last_reconcile < self.config.reconcile_s:
            return
        self._last_reconcile = time.monotonic()
        with self.database.session() as s:
            job_ids = {slot.job_id for slot in D.active_slots(s)}
        if self._slurm_worker is None:
            self._slurm_worker = ThreadPoolExecutor(1, thread_name_prefix="slurm")
        self._slurm_answer = self._slurm_worker.submit(self._ask_slurm, job_ids)

    def _ask_slurm(self, job_ids: set[int]) -> dict[int, Optional[JobInfo]]:
        """(worker thread) What Slurm says of each job: its JobInfo, or None when unknown."""
        jobs = self.slurm.jobs()
        answer: dict[int, Optional[JobInfo]] = {}
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is None:
                # squeue forgets finished jobs after MinJobAge; a job squeue does not list
                # may also be one the controller has not reported yet: ask once more.
                try:
                    job = self.slurm.job(job_id)
                except SlurmError as exc:
                    log.warning("cannot ask Slurm about job %d: %s", job_id, exc)
                    continue  # not in the answer: left alone this round
            answer[job_id] = job
        return answer

    def _apply_slurm(self, jobs: dict[int, Optional[JobInfo]]) -> None:
        with self.database.session() as s:
            for slot in D.active_slots(s):
                if slot.job_id not in jobs:
                    continue  # lent after the question, or Slurm could not say
                job = jobs[slot.job_id]
                if job is None or not job.alive:
                    self._revoke(s, slot.id, f"job {slot.job_id} is {job.state if job else 'gone'} in Slurm")
                elif slot.end_time is None and job.end_time is not None:
                    slot.end_time = job.end_time


def _fn_key(function_id: Any) -> str:
    return str(function_id)


def _slot_id(job_id: Any, node: str) -> str:
    try:
        return f"{int(job_id)}@{node}"
    except (TypeError, ValueError):
        raise P.ProtocolError(P.E_MALFORMED, f"job_id {job_id!r} is not a number") from None


def _fn_row(fn: D.Function) -> dict:
    return {"function_id": fn.id, "name": fn.name, "entrypoint": fn.entrypoint, "code_dir": fn.code_dir,
            "cores": fn.cores, "mem_mb": fn.mem_mb, "timeout_s": fn.timeout_s, "max_attempts": fn.max_attempts,
            "image": fn.image, "runtime": fn.runtime, "created_at": fn.created_at.isoformat(),
            "updated_at": fn.updated_at.isoformat() if fn.updated_at else None}


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


def _daemonize(pid_file: Optional[Path]) -> None:
    """Detach from the terminal: fork twice, new session, standard streams to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="FAAS_CONFIG",
              default=None, help="TOML configuration file (default /etc/slurm-faas/coscheduler.toml if present)")
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL, e.g. sqlite:////var/lib/slurm-faas/faas.db "
              "[env: FAAS_DB_URL]")
@click.option("--bind", default=None, help="ZeroMQ address to bind [default tcp://127.0.0.1:7800; env: "
              "FAAS_COSCHEDULER_BIND]")
@click.option("--munge-socket", default=None, help="munged socket (default: munge's own) [env: FAAS_MUNGE_SOCKET]")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="also log to this file")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help="[default INFO]")
@click.option("--reconcile-interval", "reconcile_s", type=float, default=None, help="seconds between squeue checks")
@click.option("--slurm-backend", type=click.Choice(["auto", "cli", "pyslurm"]), default=None,
              help="how to ask Slurm [default auto]")
@click.option("--foreground/--background", default=False, show_default=True,
              help="stay attached to the terminal (logging to stderr too), or detach")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="with --background: write the daemon's pid here")
def main(config_path: Optional[Path], db_url: Optional[str], bind: Optional[str], munge_socket: Optional[str],
         log_file: Optional[str], log_level: Optional[str], reconcile_s: Optional[float],
         slurm_backend: Optional[str], foreground: bool, pid_file: Optional[Path]) -> None:
    """Run the slurm-faas co-scheduler."""
    try:
        config = load_config(config_path, overrides={
            "db_url": db_url, "bind": bind, "munge_socket": munge_socket, "log_file": log_file,
            "log_level": log_level, "reconcile_s": reconcile_s, "slurm_backend": slurm_backend})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not foreground and not config.log_file:
        raise click.ClickException("in the background the co-scheduler needs a log file (--log-file or "
                                   "log_file in the configuration), or run it with --foreground")
    if not foreground:
        _daemonize(pid_file)
    setup_logging(config.log_level, config.log_file)
    database = D.Database(config.db_url)
    try:
        database.create_schema()
        daemon = Coscheduler(config, database, make_backend(config.slurm_backend))
    except Exception as exc:
        log.error("cannot start: %s", exc)
        database.dispose()
        sys.exit(1)

    def request_stop(signum, _frame):
        daemon.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    daemon.run()
    database.dispose()


if __name__ == "__main__":
    main()
