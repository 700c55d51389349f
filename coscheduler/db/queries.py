"""Reads of the queue: invocations on slots or queued, counts by state and by user,
functions by name or id, payloads, what runs on which slot.

Every function takes the caller's ``Session``; none writes or commits.

Reads only.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Union

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from faas_runtime.states import ON_SLOT, State

from .bulk import chunks, id_filters, is_postgresql, unprepared_by_ids
from .models import Function, Invocation, Slot


ACTIVE_STATES = (State.QUEUED.value, State.DISPATCHED.value, State.RUNNING.value)


def on_slot(s: Session, slot_ids: Optional[list[str]] = None) -> list[Invocation]:
    q = select(Invocation).where(Invocation.state.in_([st.value for st in ON_SLOT]))
    if slot_ids is not None:
        q = q.where(Invocation.slot_id.in_(slot_ids))
    return list(s.scalars(q))


def active_slots(s: Session) -> list[Slot]:
    return list(s.scalars(select(Slot).where(Slot.state == "ACTIVE").order_by(Slot.id)))


def queued(s: Session, limit: int) -> list[Invocation]:
    q = (
        select(Invocation)
        .where(Invocation.state == State.QUEUED.value)
        .order_by(Invocation.priority.desc(), Invocation.id)
        .limit(limit)
    )
    return list(s.scalars(q))


def count_by_state(s: Session) -> dict[str, int]:
    return {st: n for st, n in s.execute(select(Invocation.state, func.count()).group_by(Invocation.state))}


def user_counts(s: Session, uid: int) -> dict[str, int]:
    """How many invocations of ``uid`` are queued, dispatched, running."""
    q = (select(Invocation.state, func.count()).where(Invocation.owner_uid == uid, Invocation.state.in_(ACTIVE_STATES))
         .group_by(Invocation.state))
    return {st: n for st, n in s.execute(q)}


def function_named(s: Session, uid: int, name: str) -> Optional[Function]:
    return s.scalar(select(Function).where(Function.owner_uid == uid, Function.name == name,
                                           Function.deleted_at.is_(None)))


SLOTS_BY_NAME = 100  # slot_usage: above this many slots, one read of all the work on slots


def slot_usage(s: Session, slot_ids: list[str]) -> list:
    """(slot_id, slurm_cpus, mem_mb, function_id, timeout_s) of each invocation on these slots."""
    q = (select(Invocation.slot_id, Invocation.slurm_cpus, Invocation.mem_mb, Invocation.function_id,
                Function.timeout_s)
         .join(Function, Function.id == Invocation.function_id)
         .where(Invocation.state.in_([st.value for st in ON_SLOT])))
    if len(slot_ids) > SLOTS_BY_NAME:
        # Placement asks about every active slot: at scale, reading all the work on slots
        # once costs less than binding thousands of slot ids and probing each.
        wanted = set(slot_ids)
        return [row for row in s.execute(q) if row.slot_id in wanted]
    out = []
    for chunk in chunks(slot_ids):
        out.extend(s.execute(q.where(Invocation.slot_id.in_(chunk))))
    return out


def payloads(s: Session, ids: Iterable[int]) -> dict[int, Union[str, bytes]]:
    """Invocation id -> its payload: JSON text, or bytes (a binary one)."""
    out: dict[int, Union[str, bytes]] = {}
    if is_postgresql(s):  # planned for these ids (bulk.unprepared)
        rows = unprepared_by_ids(s, "SELECT id, payload, payload_bin FROM invocations WHERE id = ANY(%s)", ids)
        return {inv_id: text if binary is None else binary for inv_id, text, binary in rows}
    for where in id_filters(s, Invocation.id, ids):
        q = select(Invocation.id, Invocation.payload, Invocation.payload_bin).where(where)
        out.update((inv_id, text if binary is None else binary) for inv_id, text, binary in s.execute(q))
    return out


def states_of(s: Session, ids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """Invocation id -> (state, owner uid), for those of ``ids`` that exist."""
    out: dict[int, tuple[str, int]] = {}
    if is_postgresql(s):  # planned for these ids (bulk.unprepared)
        rows = unprepared_by_ids(s, "SELECT id, state, owner_uid FROM invocations WHERE id = ANY(%s)", ids)
        return {inv_id: (state, owner) for inv_id, state, owner in rows}
    for where in id_filters(s, Invocation.id, ids):
        q = select(Invocation.id, Invocation.state, Invocation.owner_uid).where(where)
        out.update((inv_id, (state, owner)) for inv_id, state, owner in s.execute(q))
    return out


def functions_by_id(s: Session, ids: Iterable[int]) -> dict[int, Function]:
    return {fn.id: fn for where in id_filters(s, Function.id, ids) for fn in s.scalars(select(Function).where(where))}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
