"""Lends and revokes, part of the agents' room (agents.py, whose AgentRoom inherits this):
a LEND stores a slot (in bulk: thousands of nodes announce theirs at each WELCOME), a
memory resize updates it, and a revoke (from the agent or from Slurm, reconcile.py)
requeues the slot's work in the same transaction and tells the agent.

May not touch: anything but what agents.py may.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.states import ON_SLOT, State

from . import db as D
from . import fields as F
from .db.bulk import chunks
from .hub import AgentSession, Hub, RequestFailed

log = logging.getLogger("faas.coscheduler")


class Lends:
    """The lends of the agents' sessions (mixed into ``AgentRoom``, whose fields below it uses)."""

    hub: Hub
    on_revoke: list[Callable[[str, str], None]]
    session_of: Callable[[bytes, dict], Optional[AgentSession]]  # agents.py
    _message: Callable[[Session, bytes, dict], None]  # agents.py: one message, alone

    def _lends(self, s: Session, msgs: list[tuple[bytes, dict]]) -> None:
        """LENDs in bulk: one read of the slots they name, the new ones added in one flush.
        One at a time (a savepoint and a read each) they were most of the agents' step on a
        cluster of thousands of nodes. If the bulk write fails, each is tried alone."""
        valid: list[tuple[bytes, dict, D.Slot]] = []
        for identity, msg in msgs:
            try:
                session = self.session_of(identity, msg)
                if session is not None:
                    valid.append((identity, msg, self._lend_record(session.node, msg.get("record"))))
            except (P.ProtocolError, RequestFailed) as exc:
                log.info("refused a LEND: %s: %s", exc.code, exc)
                self.hub.send(identity, P.ERROR, code=exc.code, message=str(exc))
        if not valid:
            return
        try:
            with s.begin_nested():
                existing: dict[str, Optional[D.Slot]] = {}
                for chunk in chunks(sorted({slot.id for _, _, slot in valid})):
                    existing.update((sl.id, sl) for sl in s.scalars(select(D.Slot).where(D.Slot.id.in_(chunk))))
                for _, _, slot in valid:
                    existing[slot.id] = self._apply_lend(s, slot, existing.get(slot.id))
        except Exception:
            log.exception("a batch of %d LENDs failed; handling them one by one", len(valid))
            for identity, msg, _ in valid:
                self._message(s, identity, msg)

    def _lend(self, s: Session, node: str, rec: Any) -> None:
        slot = self._lend_record(node, rec)
        self._apply_lend(s, slot, s.get(D.Slot, slot.id))

    def _lend_record(self, node: str, rec: Any) -> D.Slot:
        """The slot a LEND's record describes (not yet in the session), or a typed error."""
        if not isinstance(rec, dict):
            raise F.invalid("a LEND carries a lend record")
        job_id = F.whole(rec.get("job_id"), "job_id", 1, 2**32)
        cpus, os_cpus = F.cpu_list(rec.get("slurm_cpus"), "slurm_cpus"), F.cpu_list(rec.get("os_cpus"), "os_cpus")
        mem_mb = F.whole(rec.get("mem_mb"), "mem_mb", 0, F.MAX_MEM_MB)
        uid = F.whole(rec.get("uid"), "uid", 0, 2**32 - 1)
        end_time = F.number(rec.get("end_time") or 0, "end_time", 0, 1e11) or None
        until = F.whole(rec.get("until_min") or 0, "until_min", 0, 10**7)
        slot_id = slot_id_of(job_id, node)
        if len(cpus) != len(os_cpus):
            raise F.invalid(f"lend record {slot_id}: slurm_cpus and os_cpus differ in length")
        return D.Slot(id=slot_id, job_id=job_id, node=node, owner_uid=uid, slurm_cpus=cpus, os_cpus=os_cpus,
                      mem_mb=mem_mb, end_time=end_time, until_min=until, state="ACTIVE")  # read before its flush

    def _apply_lend(self, s: Session, slot: D.Slot, existing: Optional[D.Slot]) -> D.Slot:
        """Store a lend (lends are idempotent: agents announce them all again at each
        WELCOME); the slot now in the session."""
        if existing is not None:
            # The node's agent resizes an active lend's memory as its job grows and shrinks
            # (faas_runtime/memory_watch.py); a revoked lend never comes back.
            if existing.state == "ACTIVE" and existing.mem_mb != slot.mem_mb:
                log.info("slot %s: memory %d -> %d MiB (the agent's memory guard)", slot.id, existing.mem_mb,
                         slot.mem_mb)
                existing.mem_mb = slot.mem_mb
                self.hub.slot_changed(slot.id)
            return existing
        s.add(slot)
        if slot.end_time is None:  # slurmstepd does not know it: the reconciler asks Slurm now
            self.hub.lends_to_check.add(slot.id)
        self.hub.slot_changed(slot.id)
        log.info("slot %s: %d cores (OS CPUs %s), %d MiB", slot.id, len(slot.slurm_cpus), sorted(set(slot.os_cpus)),
                 slot.mem_mb)
        return slot

    def revoke_slot(self, s: Session, slot_id: str, reason: str) -> None:
        """A lend is over (its agent said so, or Slurm did): requeue its work in this
        transaction (in bulk: at thousands of nodes jobs end every second), tell the agent."""
        at = D.utcnow()
        done = s.execute(update(D.Slot).where(D.Slot.id == slot_id, D.Slot.state == "ACTIVE").values(
            state="REVOKED", revoked_at=at, revoke_reason=reason[:255])).rowcount
        if not done:
            return  # unknown, or revoked already
        job_id, node = slot_parts(slot_id)
        self.hub.slot_changed(slot_id)
        # By node (index on node, state): by slot, SQLite walked every invocation on a slot.
        ids = s.scalars(select(D.Invocation.id).where(
            D.Invocation.node == node, D.Invocation.state.in_([st.value for st in ON_SLOT]),
            D.Invocation.slot_id == slot_id)).all()
        changes: list[D.Change] = []
        for row in D.report_rows(s, ids).values():
            changes.extend(D.eviction_changes(row, f"slot {slot_id} revoked: {reason}"[:1000], at))
            if row.state is State.FAILED:  # out of attempts: it ended
                self.hub.ended(row.id, row.state.value)
        D.transition_many(s, changes)
        self.hub.stats.warm.pop(slot_id, None)
        self.hub.end_known.discard(slot_id)
        for on_revoke in self.on_revoke:
            on_revoke(slot_id, reason)
        self.hub.mark_dirty()
        # The agent may not know yet (the revoke came from Slurm, not from its spool): it
        # stops what still runs there. Harmless when the agent sent the revoke itself.
        self.hub.send_agent(node, P.REVOKE, job_id=job_id, node=node, reason=reason)
        log.info("slot %s revoked: %s (%d invocations requeued or failed)", slot_id, reason, len(ids))


def slot_id_of(job_id: Any, node: str) -> str:
    """A lend's slot id: ``<job id>@<node>``."""
    return f"{F.whole(job_id, 'job_id', 1, 2**32)}@{node}"


def slot_parts(slot_id: str) -> tuple[int, str]:
    """(job id, node) of a slot id (``slot_id_of``)."""
    job_id, node = slot_id.split("@", 1)
    return int(job_id), node
