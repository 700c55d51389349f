"""The agents' room: sessions, reports on invocations, adoption, liveness (lends and revokes:
lends.py; heartbeats: heartbeats.py).

Owns the agent sessions (``Hub.sessions``): a session starts when a HELLO's munge
credential proves one of ``config.agent_uids`` (root by default) and binds that node to
the ZeroMQ connection the HELLO came on. After that, a message is taken only from the
connection of a session, and only about its node: its lends, its revokes, and reports on
invocations dispatched to that node with the attempt they carry. Everything sent to an
agent carries the session key's MAC (``Hub.send_agent``).

No needless second runs: a HELLO lists what the agent holds, and a restarted
co-scheduler adopts it; an agent silent for ``agent_grace_s`` loses its work to the
queue, and if it comes back still running some of it, the later copy is stopped. Final
reports are acknowledged (ACK) after they are stored; the agent resends the others.

May not touch: client requests, placement, Slurm (reconcile.py asks it and calls
``revoke_slot``).
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any, Callable, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.states import ON_SLOT, State

from . import db as D
from . import fields as F
from .heartbeats import Heartbeats
from .lends import Lends, slot_id_of
from .hub import AgentSession, Hub, RequestFailed, fn_key
from .started import HeldStarts

log = logging.getLogger("faas.coscheduler")

FINAL_REPORTS = frozenset({P.RESULT, P.EVICTED})  # acknowledged once stored
ORPHAN_SWEEP_S = 5.0  # how often work on nodes without a session is looked for
DEAD_CHECK_S = 1.0  # how often sessions are looked at for agents silent past their grace


class AgentRoom(Heartbeats, Lends):
    def __init__(self, hub: Hub, issue: Callable[[bytes], str], offload: Callable[..., bool]):
        self.hub = hub
        self.issue = issue  # a munge credential of the co-scheduler's uid with this payload (WELCOME)
        self.offload = offload  # (item, fn, *args): fn(*args) off the loop (identity.OffLoop.call)
        # Other agent message kinds (leases.py): kind -> handler(session, transaction, session, msg).
        self.handlers: dict[str, Callable[[Session, AgentSession, dict], None]] = {}
        self.on_revoke: list[Callable[[str, str], None]] = []  # told of every revoked slot (leases.py)
        hub.binary_results = True  # _outcome stores RESULT's VALUE_BIN
        self._init_heartbeats()
        self.held_starts = HeldStarts()  # STARTEDs held for a turn (started.py)
        self.started = time.monotonic()
        self._next_orphan_sweep = self.started + hub.config.agent_grace_s
        self._next_dead_check = self.started

    # -- HELLO: a session ------------------------------------------------------------------

    def hello(self, identity: bytes, msg: dict, uid: int) -> None:
        """A HELLO whose credential proved ``uid``: its WELCOME's credential is made off the
        loop (``offload``: a munge round trip, milliseconds on a loaded host, and thousands
        of agents say HELLO at once when a co-scheduler starts); ``welcome`` then opens the
        session. Until then nothing is sent to the node on this connection."""
        node = msg.get("node")
        if uid not in self.hub.config.agent_uids:
            log.warning("Security violation: HELLO for node %r from uid %d (agents are uids %s)", node, uid,
                        sorted(self.hub.config.agent_uids))
            raise RequestFailed(P.E_AUTH, f"uid {uid} may not act as an agent")
        node = F.text(node, "node", F.MAX_NODE_NAME, F.NODE_RE)
        held = self._held(msg.get("held", []))
        nonce = F.text(msg.get("nonce"), "nonce", 64)
        key = secrets.token_bytes(32)
        welcome = json.dumps({"node": node, "nonce": nonce, "key": key.hex()}).encode()
        # The WELCOME itself is proven by the credential; every later message by the key's MAC.
        if not self.offload((identity, P.WELCOME, {"node": node, "held": held, "key": key}), self.issue, welcome):
            raise RequestFailed(P.E_BUSY, "the co-scheduler is welcoming too many agents; try again")
        self.welcoming += 1  # the heartbeat period counts them (heartbeats.py)

    def welcome(self, identity: bytes, hello: dict, cred: Any) -> None:
        """The WELCOME's credential is made (``cred``, or the exception making it raised):
        open the node's session (replacing an older one: the agent restarted or
        reconnected), adopt what it holds, WELCOME it."""
        self.welcoming -= 1
        if isinstance(cred, BaseException):
            raise RequestFailed(P.E_INTERNAL, f"cannot make the WELCOME's credential: {cred}")
        node, held = hello["node"], hello["held"]
        with self.hub.database.session(write=True) as s:
            self.hub.add_session(AgentSession(node, identity, hello["key"], time.monotonic()))
            self._adopt(s, node, held)
            self._requeue_unheld(s, node, {h["invocation_id"] for h in held}, self.hub.config.dispatch_grace_s)
        self.hub.send(identity, P.WELCOME, node=node, cred=cred, heartbeat_s=self.heartbeat_s())
        self.hub.mark_dirty()
        log.info("agent %s registered (%d held)", node, len(held))

    @staticmethod
    def _held(value: Any) -> list[dict]:
        if not isinstance(value, list) or len(value) > F.MAX_IDS:
            raise F.invalid("held must be a list of the invocations the agent holds")
        out = []
        for h in value:
            if not isinstance(h, dict):
                raise F.invalid("each held invocation is a map")
            out.append({"invocation_id": F.whole(h.get("invocation_id"), "invocation_id", 1, F.INT64_MAX),
                        "attempt": F.whole(h.get("attempt"), "attempt", 1, F.MAX_ATTEMPTS),
                        "slot_id": F.text(h.get("slot_id"), "slot_id", 300),
                        "cpus": F.cpu_list(h.get("cpus"), "cpus") if h.get("cpus") else [],
                        "running": h.get("running") is True})
        return out

    def _adopt(self, s: Session, node: str, held: list[dict]) -> None:
        """What a (re)connecting agent still holds, against what the database says:
        the same attempt on this node: kept; requeued after this agent went silent and not
        dispatched again: adopted back; dispatched again elsewhere meanwhile: the later copy
        is stopped and this one kept; anything else (ended, cancelled): stopped here."""
        if not held:
            return
        rows = D.report_rows(s, [h["invocation_id"] for h in held])
        slots = {sl.id: sl for sl in s.scalars(select(D.Slot).where(D.Slot.node == node, D.Slot.state == "ACTIVE"))}
        fns = D.functions_by_id(s, {r.function_id for r in rows.values()})
        at, changes = D.utcnow(), []
        for h in held:
            inv_id, attempt, row = h["invocation_id"], h["attempt"], rows.get(h["invocation_id"])
            slot = slots.get(h["slot_id"])
            if row is not None and row.state in ON_SLOT and row.node == node and row.attempts == attempt:
                if h["running"] and row.state is State.DISPATCHED:
                    changes.append(D.Change(inv_id, State.DISPATCHED, State.RUNNING, at))
                continue
            cpus = [c for c in h["cpus"] if slot is not None and c in slot.slurm_cpus]
            if row is not None and slot is not None and cpus and row.attempts == attempt and \
                    row.state is State.QUEUED and row.function_id not in self.hub.cancelling:
                values = {"slot_id": slot.id, "node": node, "job_id": slot.job_id, "slurm_cpus": cpus,
                          "os_cpus": slot.os_cpus_of(cpus), "mem_mb": fns[row.function_id].mem_mb,
                          "dispatched_at": at}
                changes.append(D.Change(inv_id, State.QUEUED, State.DISPATCHED, at,
                                        f"adopted back from {node}, which still ran it", values))
                if h["running"]:
                    changes.append(D.Change(inv_id, State.DISPATCHED, State.RUNNING, at))
                log.info("invocation %d: adopted back from %s (attempt %d)", inv_id, node, attempt)
                continue
            if row is not None and slot is not None and cpus and row.state in ON_SLOT and \
                    row.node != node and row.attempts > attempt:
                # Dispatched again while this agent was silent: keep the copy that started
                # first, stop the later one (its reports carry a later attempt: ignored).
                self.hub.send_agent(row.node, P.CANCEL, invocation_id=inv_id, attempt=row.attempts,
                                    reason=f"a duplicate: the earlier copy on {node} still runs")
                self.hub.work_changed(row.node)
                D.repoint(s, inv_id, {"attempts": attempt, "slot_id": slot.id, "node": node, "job_id": slot.job_id,
                                      "slurm_cpus": cpus, "os_cpus": slot.os_cpus_of(cpus)},
                          f"the later copy on {row.node} (attempt {row.attempts}) stopped: {node} still runs "
                          f"attempt {attempt}")
                log.warning("invocation %d ran twice: attempt %d on %s stopped, attempt %d on %s kept",
                            inv_id, row.attempts, row.node, attempt, node)
                continue
            self.hub.send_agent(node, P.CANCEL, invocation_id=inv_id, attempt=attempt,
                                reason="the co-scheduler has no such work on this node")
        D.transition_many(s, changes)
        self.hub.work_changed(node)  # placement reads the node's work again (capacity.py)

    def _requeue_unheld(self, s: Session, node: str, held: set[int], grace_s: float) -> None:
        """Requeue work the database places on ``node`` that its agent does not hold. Only
        work dispatched longer ago than the grace is known lost: a RUN sent a moment ago
        may cross the agent's message."""
        now = D.utcnow()
        for inv in _on_node(s, node):
            if inv.id in held:
                continue
            age = (now - inv.dispatched_at).total_seconds() if inv.dispatched_at else grace_s
            if age >= grace_s:
                D.evict(s, inv, f"agent on {node} does not run it")
                self.hub.work_changed(node)

    # -- the other messages of a session -----------------------------------------------------

    def session_of(self, identity: bytes, msg: dict) -> Optional[AgentSession]:
        """The session this connection holds, or None (it is told to say HELLO). A session
        speaks only for its own node."""
        session = self.hub.by_identity.get(identity)
        if session is None:
            # A restarted co-scheduler, a session lost to liveness, or no agent at all.
            self.hub.send(identity, P.ERROR, code=P.E_UNKNOWN_AGENT, message="say hello first")
            return None
        node = msg.get("node", session.node)
        if node != session.node:
            log.warning("Security violation: the agent of %s sent a %s for node %r", session.node, msg.get("type"),
                        node)
            raise RequestFailed(P.E_AUTH, f"this connection speaks for node {session.node} only")
        session.last_seen = time.monotonic()
        return session

    def batch(self, msgs: list[tuple[bytes, dict]]) -> None:
        """Agents' messages in one transaction (a burst of results costs one commit), in the
        order they arrived: each run of reports, and each run of LENDs, in bulk; every other
        message in a savepoint of its own, so that a bad one is refused alone. (Heartbeats
        are not here: heartbeats.py takes them as they are read.)"""
        acks: dict[str, list[list[int]]] = {}
        self.hub.metrics.count("agent_messages", len(msgs))

        def reports(s: Session, run: list[tuple[bytes, dict]]) -> None:
            self._reports(s, run, acks)

        bulk = {P.LEND: self._lends, **dict.fromkeys(P.REPORT_TYPES, reports)}
        with self.hub.database.session(write=True) as s:
            run: list[tuple[bytes, dict]] = []  # consecutive reports, or consecutive LENDs: handled in bulk
            for identity, msg in msgs:
                if run and bulk.get(msg["type"]) is not bulk[run[0][1]["type"]]:
                    bulk[run[0][1]["type"]](s, run)
                    run = []
                if msg["type"] in bulk:
                    run.append((identity, msg))
                else:
                    self._message(s, identity, msg)
            if run:
                bulk[run[0][1]["type"]](s, run)
        for node, done in acks.items():  # queued after the commit above (the loop sends them)
            self.hub.send_agent(node, P.ACK, reports=done)

    def _message(self, s: Session, identity: bytes, msg: dict) -> None:
        mark = len(self.hub.outbox)
        try:
            with s.begin_nested():
                session = self.session_of(identity, msg)
                if session is not None:
                    self._handle(s, session, msg)
        except (P.ProtocolError, RequestFailed) as exc:
            del self.hub.outbox[mark:]
            log.info("refused an agent message: %s: %s", exc.code, exc)
            self.hub.send(identity, P.ERROR, code=exc.code, message=str(exc))
        except Exception as exc:
            del self.hub.outbox[mark:]
            log.exception("internal error handling a %s message", msg.get("type"))
            self.hub.send(identity, P.ERROR, code=P.E_INTERNAL, message=f"internal error: {exc}")

    def _handle(self, s: Session, session: AgentSession, msg: dict) -> None:
        kind, node = msg["type"], session.node
        if kind in self.handlers:
            self.handlers[kind](s, session, msg)
        elif kind == P.HEARTBEAT:
            self._beat(session, msg)
        elif kind == P.LEND:
            self._lend(s, node, msg.get("record"))
        elif kind == P.REVOKE:
            self.revoke_slot(s, slot_id_of(msg.get("job_id"), node),
                             F.text(str(msg.get("reason", "revoked by the batch job")), "reason", 1000))
        elif kind == P.HELLO:
            raise RequestFailed(P.E_INVALID, "HELLO is answered once its credential is checked")
        else:
            raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown agent message {kind!r}")

    # -- reports ---------------------------------------------------------------------------

    def _reports(self, s: Session, msgs: list[tuple[bytes, dict]], acks: dict[str, list[list[int]]]) -> None:
        """STARTED, RESULT and EVICTED, in bulk: one read of the invocations they are about,
        then their state changes in order (``db.transition_many``). A report counts only if
        the invocation is on a slot of the sender's node with the attempt it names; the
        others (an earlier attempt, a cancelled one, another node's) are ignored. If the
        bulk write fails, each report is tried alone, so one bad report is refused alone."""
        valid: list[tuple[str, int, dict]] = []
        for identity, msg in msgs:
            try:
                session = self.session_of(identity, msg)
                if session is None:
                    continue
                inv_id = F.whole(msg.get("invocation_id"), "invocation_id", 1, F.INT64_MAX)
                msg["attempt"] = F.whole(msg.get("attempt"), "attempt", 1, F.MAX_ATTEMPTS)
            except (P.ProtocolError, RequestFailed) as exc:
                log.info("refused an agent report: %s: %s", exc.code, exc)
                self.hub.send(identity, P.ERROR, code=exc.code, message=str(exc))
                continue
            valid.append((session.node, inv_id, msg))
        if not valid:
            return
        try:
            with s.begin_nested():
                self._apply_reports(s, valid)
        except Exception:
            if len(valid) > 1:
                log.exception("a batch of %d reports failed; handling them one by one", len(valid))
                for node, inv_id, msg in valid:
                    self._one_report(s, node, inv_id, msg, acks)
            else:
                log.exception("internal error handling a %s report", valid[0][2].get("type"))
            return
        for node, inv_id, msg in valid:
            if msg["type"] in FINAL_REPORTS:
                acks.setdefault(node, []).append([inv_id, msg["attempt"]])

    def _one_report(self, s: Session, node: str, inv_id: int, msg: dict, acks: dict) -> None:
        try:
            with s.begin_nested():
                self._apply_reports(s, [(node, inv_id, msg)])
        except Exception:
            log.exception("internal error handling a %s report on invocation %d", msg.get("type"), inv_id)
            return  # not acknowledged: the agent sends it again
        if msg["type"] in FINAL_REPORTS:
            acks.setdefault(node, []).append([inv_id, msg["attempt"]])

    def _apply_reports(self, s: Session, items: list[tuple[str, int, dict]]) -> None:
        rows = D.report_rows(s, {inv_id for _, inv_id, _ in items})
        changes: list[D.Change] = []
        for node, inv_id, msg in items:
            row = rows.get(inv_id)
            if row is None or row.state not in ON_SLOT or row.node != node or row.attempts != msg["attempt"]:
                if row is not None and row.node not in (None, node) and row.state in ON_SLOT:
                    log.warning("Security violation: the agent of %s reported on invocation %d of %s",
                                node, inv_id, row.node)
                continue  # a late message about an earlier attempt, a cancelled one, another node's
            kind, now = msg["type"], D.utcnow()
            if kind != P.STARTED:  # a core freed (STARTED leaves the work where it was)
                self.hub.work_changed(node)
            if kind == P.STARTED:  # written with the report that follows, or next turn (started.py)
                self.held_starts.hold(row, now)
                continue
            changes += self.held_starts.take(inv_id, node, msg["attempt"], row)  # a held STARTED goes first
            if kind == P.RESULT:
                self.hub.mark_dirty()
                if row.slot_id:
                    self.hub.stats.note_warm(row.slot_id, fn_key(row.function_id))
                self.hub.stats.note_run_time(fn_key(row.function_id), msg.get("run_s"))
                cpus = msg.get("cpus")
                self.hub.metrics.result(str(msg.get("outcome"))[:16], msg.get("run_s"),
                                        len(cpus) if isinstance(cpus, list) else 1)
                new, values, reason = _outcome(msg)
                changes.append(D.Change(inv_id, row.state, new, now, reason, values))
                row.state = new
                self.hub.ended(inv_id, new.value)  # subscribers are told after the commit
            else:  # EVICTED
                self.hub.mark_dirty()
                self.hub.metrics.count("evictions")
                changes.extend(D.eviction_changes(row, str(msg.get("reason", "evicted"))[:1000], now,
                                                  unstarted=msg.get("unstarted") is True))
                if row.state is State.FAILED:  # out of attempts: it ended
                    self.hub.ended(inv_id, row.state.value)
        D.transition_many(s, changes)

    # -- liveness ----------------------------------------------------------------------------

    def step_liveness(self) -> None:
        """Agents silent for ``agent_grace_s`` lose their sessions and their work goes back
        to the queue; so does work on nodes that never said HELLO to this co-scheduler, and
        work heartbeats say their agents do not hold (_check_held, once a second)."""
        self.held_starts.step(self.hub.database)  # STARTEDs no report followed within a turn (started.py)
        self.check_held()
        now = time.monotonic()
        grace = self.hub.config.agent_grace_s
        sweep = now >= self._next_orphan_sweep
        if now < self._next_dead_check and not sweep:
            return  # a look at every session each turn was a cost of thousands of agents
        self._next_dead_check = now + min(DEAD_CHECK_S, grace / 10)
        dead = [n for n, a in self.hub.sessions.items() if now - a.last_seen > grace]
        if not dead and not sweep:
            return
        with self.hub.database.session() as s:
            for node in dead:
                log.warning("agent %s silent for %.0f s; requeueing its work", node, grace)
                self.hub.drop_session(node)
                self.hub.work_changed(node)
                for inv in _on_node(s, node):
                    D.evict(s, inv, f"agent on {node} stopped answering")
            if sweep:
                self._next_orphan_sweep = now + ORPHAN_SWEEP_S
                for inv in s.scalars(select(D.Invocation).where(
                        D.Invocation.state.in_([st.value for st in ON_SLOT]),
                        D.Invocation.node.not_in(list(self.hub.sessions) or [""]))):
                    self.hub.work_changed(inv.node)
                    D.evict(s, inv, f"no agent on {inv.node} since this co-scheduler started")
        self.hub.mark_dirty()


def _on_node(s: Session, node: str):
    return list(s.scalars(select(D.Invocation).where(
        D.Invocation.node == node, D.Invocation.state.in_([st.value for st in ON_SLOT]))))


def _outcome(msg: dict) -> tuple[State, dict, Optional[str]]:
    """A RESULT's new state, the columns it sets, and the reason recorded with it."""
    values: dict[str, Any] = {"ran_on_cpus": msg.get("cpus") if isinstance(msg.get("cpus"), list) else None,
                              "output": P.text_tail(msg.get("output"), P.MAX_OUTPUT_BYTES)}
    if msg.get("outcome") == "ok":
        binary = msg.get(P.VALUE_BIN)
        if isinstance(binary, bytes) and len(binary) <= P.MAX_RESULT_BYTES:
            values["result_bin"] = binary  # the Python API's pickled value: opaque bytes here
        else:
            value = msg.get("value_json")
            values["result"] = value if isinstance(value, str) else "null"
        return State.SUCCEEDED, values, None
    timeout = msg.get("outcome") == "timeout"
    error = msg.get("error")
    values["error"] = str(error)[:P.MAX_ERROR_CHARS] if error else ("timed out" if timeout else "failed")
    values["traceback"] = P.text_tail(msg.get("traceback"), P.MAX_ERROR_CHARS)
    return (State.TIMED_OUT if timeout else State.FAILED), values, values["error"][:1000]
