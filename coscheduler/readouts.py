"""What users read about their invocations: status, results in bulk, output, listings,
and why a queued one waits (reasons.py). Read only, one request's session.

May not touch: anything it reads (no writes), agent sessions (it reads which nodes hold
one), placement.
"""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.states import TERMINAL, State

from . import db as D
from . import fields as F
from .hub import Hub, RequestFailed
from .reasons import pending_reason

MAX_LIST = 100_000
MAX_RESULTS = 1_000  # ids per RESULTS request (the client asks in chunks)
RESULTS_BYTES = 16 << 20  # values per RESULTS reply; the rest is asked for again (``more``)


class Readouts:
    def __init__(self, hub: Hub):
        self.hub = hub

    def owned(self, s: Session, uid: int, inv_id: Any) -> D.Invocation:
        inv_id = F.whole(inv_id, "invocation_id", 1, F.INT64_MAX)
        inv = s.get(D.Invocation, inv_id)
        if inv is None or (inv.owner_uid != uid and uid != 0):
            raise RequestFailed(P.E_NOT_FOUND, f"no invocation {inv_id} of yours")
        return inv

    def reasons(self, s: Session, uid: int, fns: list[D.Function]) -> dict[int, str]:
        """Function id -> why its queued invocations wait (the owner's quota included)."""
        if not fns:
            return {}
        slots = [sl for sl in D.active_slots(s) if sl.node in self.hub.sessions]
        running = sum(n for st, n in D.user_counts(s, uid).items() if st != State.QUEUED.value)
        limit = self.hub.config.quota(uid).max_running
        return {fn.id: pending_reason(fn, slots, running, limit) for fn in fns}

    def status(self, s: Session, uid: int, msg: dict) -> dict:
        inv = self.owned(s, uid, msg.get("invocation_id"))
        out = {
            "invocation_id": inv.id, "function": _name(inv.function.name), "state": inv.state,
            "attempts": inv.attempts, "node": inv.node, "job_id": inv.job_id,
            "slurm_cpus": inv.slurm_cpus, "os_cpus": inv.os_cpus, "ran_on_cpus": inv.ran_on_cpus,
            "error": inv.error, "traceback": inv.traceback, "priority": inv.priority,
            "output_bytes": len(inv.output.encode()) if inv.output else 0,
            "history": [[e.to_state, e.at.isoformat(), e.reason] for e in inv.events],
        }
        if inv.state == State.QUEUED.value:
            out["reason"] = self.reasons(s, inv.owner_uid, [inv.function])[inv.function_id]
        return out

    def result(self, s: Session, uid: int, msg: dict) -> dict:
        inv = self.owned(s, uid, msg.get("invocation_id"))
        if inv.state == State.SUCCEEDED.value:
            return {"state": inv.state, **value_fields(inv)}
        if State(inv.state) in TERMINAL:
            raise RequestFailed(P.E_NOT_FOUND, f"invocation {inv.id} ended {inv.state}: {inv.error}")
        raise RequestFailed(P.E_NOT_READY, f"invocation {inv.id} is {inv.state}; no result yet")

    def results(self, s: Session, uid: int, msg: dict) -> dict:
        """Results of ``ids`` in the order asked; a row for each (state, value or error).
        Values stop at RESULTS_BYTES: ``more`` then says the client must ask for the rest."""
        ids = F.ids(msg.get("ids"), "ids", MAX_RESULTS)
        q = select(D.Invocation).where(D.Invocation.id.in_(ids))
        if uid != 0:
            q = q.where(D.Invocation.owner_uid == uid)
        found = {inv.id: inv for inv in s.scalars(q)}
        rows, size = [], 0
        for inv_id in ids:
            inv = found.get(inv_id)
            if inv is None:
                rows.append({"invocation_id": inv_id, "state": None, "error": f"no invocation {inv_id} of yours"})
                continue
            row = {"invocation_id": inv_id, "state": inv.state}
            if inv.state == State.SUCCEEDED.value:
                value = value_fields(inv)
                if rows and size + len(next(iter(value.values()))) > RESULTS_BYTES:
                    return {"results": rows, "more": True}
                size += len(next(iter(value.values())))
                row.update(value)
            elif State(inv.state) in TERMINAL:
                row.update(error=inv.error, traceback=inv.traceback)
            rows.append(row)
        return {"results": rows, "more": False}

    def output(self, s: Session, uid: int, msg: dict) -> dict:
        inv = self.owned(s, uid, msg.get("invocation_id"))
        if State(inv.state) not in TERMINAL:
            raise RequestFailed(P.E_NOT_READY, f"invocation {inv.id} is {inv.state}; its output comes with its "
                                               "result")
        return {"invocation_id": inv.id, "state": inv.state, "output": inv.output or ""}

    def listing(self, s: Session, uid: int, msg: dict, function: Optional[D.Function]) -> dict:
        inv_t = D.Invocation  # columns only: a listing never loads payloads or results
        q = select(inv_t.id, inv_t.function_id, D.Function.name, inv_t.state, inv_t.attempts, inv_t.priority,
                   inv_t.node, inv_t.job_id, inv_t.created_at, inv_t.updated_at, inv_t.error, inv_t.owner_uid
                   ).join(D.Function, inv_t.function_id == D.Function.id)
        if uid != 0 or not msg.get("all_users"):
            q = q.where(D.Invocation.owner_uid == uid)
        states = msg.get("states")
        if states:
            if not isinstance(states, list) or len(states) > len(State):
                raise F.invalid("states must be a list of state names")
            bad = [st for st in states if st not in State.__members__]
            if bad:
                raise F.invalid(f"unknown state {str(bad[0])[:40]!r}")
            q = q.where(D.Invocation.state.in_(states))
        if function is not None:
            q = q.where(D.Invocation.function_id == function.id)
        if msg.get("ids"):
            q = q.where(D.Invocation.id.in_(F.ids(msg["ids"])))
        limit = F.whole(msg.get("limit") or 100, "limit", 1, MAX_LIST)
        rows = s.execute(q.order_by(D.Invocation.id.desc()).limit(limit)).all()
        reasons = self._queued_reasons(s, [r for r in rows if r.state == State.QUEUED.value])
        return {"invocations": [
            {"invocation_id": r.id, "function": _name(r.name), "state": r.state,
             "attempts": r.attempts, "priority": r.priority, "node": r.node, "job_id": r.job_id,
             "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
             "error": r.error, "reason": reasons.get((r.owner_uid, r.function_id))} for r in rows]}

    def _queued_reasons(self, s: Session, rows: list) -> dict[tuple[int, int], str]:
        """(owner, function id) -> pending reason, for the queued rows of a listing."""
        fns = D.functions_by_id(s, {r.function_id for r in rows})
        out: dict[tuple[int, int], str] = {}
        for owner in {r.owner_uid for r in rows}:
            mine = [fns[f] for f in {r.function_id for r in rows if r.owner_uid == owner}]
            out.update(((owner, f), why) for f, why in self.reasons(s, owner, mine).items())
        return out


def value_fields(inv: D.Invocation) -> dict[str, Any]:
    """A succeeded invocation's value: ``VALUE_BIN`` bytes (a binary one) or ``value_json``."""
    if inv.result_bin is not None:
        return {P.VALUE_BIN: inv.result_bin}
    return {"value_json": inv.result if inv.result is not None else "null"}


def _name(stored: str) -> str:
    """A function's name as its owner gave it (a deleted one's row carries a tombstone)."""
    return stored.split("#deleted-")[0]
