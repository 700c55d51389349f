"""Placement's memory of the lent capacity: the active slots and the work on them, kept
between scheduling passes, so that a pass costs what changed and what it places, not
what is lent.

On a cluster of thousands of nodes, reading every active slot and every invocation on a
slot, and building a view of each, was most of a pass (and a pass ran many times a
second). Here:

- Slots and the work on them are read once, then per node, for the nodes the rooms say
  changed: ``Hub.slot_changed`` (a lend written: lent, resized, revoked, its end learned)
  and ``Hub.work_changed`` (work on the node dispatched, reported on, evicted, cancelled,
  adopted). A rolling reread of a few nodes each pass goes over every node every
  ``RESYNC_S``, so a write nobody marked (another process, a missed mark) is seen then.
- Slots are indexed by their free cores: a pass offers placement the usable slots with the
  fewest free cores that can hold what it claimed, twice over (best fit, which ``place``
  itself prefers, among them), and the slots whose lent cores carry work (dispatch-ahead)
  only when free cores cannot hold it all. A pass that places 100 invocations on a
  machine of 40,000 free cores looks at about 200 slots.
- What each user has on slots (fair share, quotas) is counted from the same memory.

Warm executors are preferred among the slots offered (``SlotView.warm_functions``), not
among all.

Owns: its memory of slots and work (it reads the database, never writes). May not touch:
sockets, agent sessions (read only), the queue.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Callable, Iterable, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime.states import ON_SLOT

from . import db as D
from .db.bulk import chunks
from .hub import Hub, fn_key
from .lends import slot_parts
from .scheduler import NO_LANE, Lane, PendingInvocation, SlotView

RESYNC_S = 60.0  # every node's slots and work are read again at least this often
OFFER_FACTOR = 2  # a pass offers free capacity for this many times what it claimed
SCAN_SLOTS = 500  # ... looking at no more slots than this (or 4 per invocation offered for) ...
FULL_SCAN_S = 1.0  # ... except once this often


class _Lent:
    """One active slot and the work on it (invocations dispatched or running there)."""

    __slots__ = ("slot", "work", "free_cpus", "free_mem")

    def __init__(self, slot: D.Slot, work: list):
        self.slot, self.work = slot, work
        busy: set[int] = set()
        lane_mem: dict[int, float] = {}
        for _slot_id, cpus, mem_mb, *_ in work:
            for c in cpus or ():
                busy.add(c)
                lane_mem[c] = max(lane_mem.get(c, 0.0), mem_mb / len(cpus))
        # Only one invocation runs on a core at a time: the memory in use is at most the
        # sum of its lanes' (scheduler.Lane).
        self.free_cpus = [c for c in slot.slurm_cpus if c not in busy]
        self.free_mem = slot.mem_mb - math.ceil(sum(lane_mem.values()))

    def lanes(self, run_time: dict[str, float]) -> dict[int, Lane]:
        """Per lent core in use, its lane: invocations on it, the work expected of them,
        the most memory one holds per core."""
        lanes: dict[int, Lane] = {}
        for _slot_id, cpus, mem_mb, function_id, timeout_s, _owner in self.work:
            expected = run_time.get(fn_key(function_id), timeout_s)
            for c in cpus or ():
                n, backlog, lane_mem = lanes.get(c, NO_LANE)
                lanes[c] = Lane(n + 1, backlog + expected, max(lane_mem, mem_mb / len(cpus)))
        return lanes


_WORK = (select(D.Invocation.node, D.Invocation.slot_id, D.Invocation.slurm_cpus, D.Invocation.mem_mb,
                D.Invocation.function_id, D.Function.timeout_s, D.Invocation.owner_uid)
         .join(D.Function, D.Function.id == D.Invocation.function_id)
         .where(D.Invocation.state.in_([st.value for st in ON_SLOT])))


class Capacity:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.slots: dict[str, _Lent] = {}
        self.by_free: list[dict[str, None]] = [{}]  # free cores -> slot ids (ordered sets)
        self.with_work: set[str] = set()  # slots whose lent cores carry work
        self._node_slots: dict[str, list[str]] = {}
        self._node_work: dict[str, list] = {}
        self.by_user: collections.Counter[int] = collections.Counter()  # invocations on slots
        self.loaded = False
        self._resync_order: list[str] = []
        self._resync_at = 0  # the next node of _resync_order to read again
        self._resync_last = time.monotonic()
        self._resync_credit = 0.0  # nodes owed to the rolling reread
        self._next_full_scan = 0.0

    # -- reading ----------------------------------------------------------------------------

    def refresh(self, s: Session) -> None:
        """Read what changed since the last pass (everything, the first time)."""
        hub = self.hub
        if not self.loaded:
            hub.slots_changed.clear()
            hub.nodes_changed.clear()
            self._read(s, None)
            self.loaded = True
            return
        work_nodes, hub.nodes_changed = hub.nodes_changed, set()
        slot_nodes = {slot_parts(slot_id)[1] for slot_id in hub.slots_changed}
        hub.slots_changed = set()
        slot_nodes.update(self._resync_due())
        if slot_nodes:
            self._read(s, sorted(slot_nodes))
        work_nodes -= slot_nodes
        if work_nodes:  # most changes: work ended or dispatched; the slots are as they were
            self._read(s, sorted(work_nodes), slots_too=False)

    def _resync_due(self) -> list[str]:
        """The next few nodes of the rolling reread: all of them every RESYNC_S."""
        mono = time.monotonic()
        if self._resync_at >= len(self._resync_order):
            self._resync_order = sorted(self._node_slots.keys() | self._node_work.keys())
            self._resync_at = 0
        self._resync_credit += len(self._resync_order) * (mono - self._resync_last) / RESYNC_S
        self._resync_last = mono
        n = int(self._resync_credit)
        if not n:
            return []
        self._resync_credit -= n
        due = self._resync_order[self._resync_at:self._resync_at + n]
        self._resync_at += n
        return due

    def _read(self, s: Session, nodes: Optional[list[str]], slots_too: bool = True) -> None:
        """The active slots and the work on ``nodes`` (None: on every node), replacing what
        was known of them; with ``slots_too=False``, only the work (the slots from memory)."""
        slots: dict[str, list[D.Slot]] = {}
        work: dict[str, list] = {}
        if nodes is None:
            for sl in D.active_slots(s):
                slots.setdefault(sl.node, []).append(sl)
            for node, *row in s.execute(_WORK):
                work.setdefault(node, []).append(tuple(row))
            nodes = list(slots.keys() | work.keys() | self._node_slots.keys() | self._node_work.keys())
        else:
            for chunk in chunks(nodes):
                if slots_too:
                    for sl in s.scalars(select(D.Slot).where(D.Slot.node.in_(chunk), D.Slot.state == "ACTIVE")):
                        slots.setdefault(sl.node, []).append(sl)
                for node, *row in s.execute(_WORK.where(D.Invocation.node.in_(chunk))):
                    work.setdefault(node, []).append(tuple(row))
        for node in nodes:
            held = slots.get(node, []) if slots_too else [self.slots[i].slot for i in self._node_slots.get(node, ())]
            self._set_node(node, held, work.get(node, []))

    def _set_node(self, node: str, slots: list[D.Slot], work: list) -> None:
        for slot_id in self._node_slots.pop(node, ()):
            self._drop(slot_id)
        for row in self._node_work.pop(node, ()):
            self.by_user[row[-1]] -= 1
            if not self.by_user[row[-1]]:
                del self.by_user[row[-1]]
        by_slot: dict[str, list] = {}
        for row in work:
            by_slot.setdefault(row[0], []).append(row)
            self.by_user[row[-1]] += 1
        if work:
            self._node_work[node] = work
        if slots:
            self._node_slots[node] = [sl.id for sl in slots]
        for sl in slots:
            lent = self.slots[sl.id] = _Lent(sl, by_slot.get(sl.id, []))
            free = len(lent.free_cpus)
            while len(self.by_free) <= free:
                self.by_free.append({})
            self.by_free[free][sl.id] = None
            if lent.work:
                self.with_work.add(sl.id)

    def _drop(self, slot_id: str) -> None:
        lent = self.slots.pop(slot_id, None)
        if lent is not None:
            self.by_free[len(lent.free_cpus)].pop(slot_id, None)
            self.with_work.discard(slot_id)

    # -- what a pass offers ----------------------------------------------------------------

    def room(self, deepest: int, enough: int) -> int:
        """Invocations the lent cores could take now: each free core one to run and
        ``deepest`` to wait, each lane ``deepest`` + 1 less what it carries (counted only
        until ``enough``: it bounds a claim)."""
        room = sum(k * len(ids) for k, ids in enumerate(self.by_free)) * (1 + deepest)
        if room < enough and deepest:
            for slot_id in self.with_work:
                counts = collections.Counter(c for row in self.slots[slot_id].work for c in row[1] or ())
                room += sum(max(0, deepest + 1 - n) for n in counts.values())
        return room

    def views(self, requests: Iterable[PendingInvocation], now: float, usable: Callable[[D.Slot], bool],
              reserved_cpus: dict[str, set[int]], reserved_mem: dict[str, int], deepest: int) -> list[SlotView]:
        """The slots a pass offers placement for ``requests``: the usable ones with the
        fewest free cores that can hold them OFFER_FACTOR times over, by shape (cores,
        memory, timeout); and, when free cores cannot hold them all and functions may wait
        (``deepest``), every usable slot whose cores carry work. Cores and memory in
        ``reserved_*`` (leases to hot clients) are not free."""
        need: dict[tuple, int] = collections.Counter(
            (r.cores, r.mem_mb, r.timeout_s) for r in requests if r.cores >= 1)
        for shape in need:
            need[shape] *= OFFER_FACTOR
        hub, mono = self.hub, time.monotonic()
        run_time = hub.stats.run_time
        views: dict[str, SlotView] = {}

        def view(lent: _Lent, free_cpus: list[int], free_mem: int) -> Optional[SlotView]:
            sl = lent.slot
            rem = float("inf") if sl.lend_end is None else sl.lend_end - now
            if rem <= 0 or not usable(sl):
                return None
            queued = {}
            if deepest and lent.work:
                queued = {c: lane for c, lane in lent.lanes(run_time).items()
                          if lane.count <= deepest and c not in reserved_cpus.get(sl.id, ())}
            return SlotView(sl.id, free_cpus, free_mem, sl.lend_end, hub.stats.warm_on(sl.id, mono), queued)

        def offer(v: Optional[SlotView]) -> None:
            if v is None or not v.free_cpus or v.free_mem_mb <= 0:
                return
            rem, k, took = v.remaining(now), len(v.free_cpus), False
            for (cores, mem, timeout), n in need.items():
                if n > 0 and k >= cores and v.free_mem_mb >= mem and rem >= timeout:
                    need[cores, mem, timeout] -= min(k // cores, v.free_mem_mb // max(mem, 1))
                    took = True
            if took:
                views[v.slot_id] = v

        for slot_id in reserved_cpus.keys() | reserved_mem.keys():  # a few leases: their true free capacity
            lent = self.slots.get(slot_id)
            if lent is not None:
                busy = reserved_cpus.get(slot_id, set())
                offer(view(lent, [c for c in lent.free_cpus if c not in busy],
                           lent.free_mem - reserved_mem.get(slot_id, 0)))
        # A request no slot can hold (more memory than any lends) would make every pass
        # look at every slot: past SCAN_SLOTS a pass stops, except once a FULL_SCAN_S.
        full = mono >= self._next_full_scan
        if full:
            self._next_full_scan = mono + FULL_SCAN_S
        budget = len(self.slots) if full else max(SCAN_SLOTS, 4 * sum(need.values()))
        smallest = min((cores for cores, _, _ in need), default=len(self.by_free))
        for k in range(max(1, smallest), len(self.by_free)):
            for slot_id in self.by_free[k]:
                if slot_id not in views and slot_id not in reserved_cpus and slot_id not in reserved_mem:
                    lent = self.slots[slot_id]
                    if lent.free_mem > 0:
                        offer(view(lent, lent.free_cpus, lent.free_mem))
                budget -= 1
                if budget <= 0 or max(need.values(), default=0) <= 0:
                    break
            if budget <= 0 or max(need.values(), default=0) <= 0:
                break
        if deepest and max(need.values(), default=0) > 0:
            for slot_id in self.with_work:  # free cores cannot hold it all: lanes may
                if slot_id not in views:
                    lent = self.slots[slot_id]
                    busy = reserved_cpus.get(slot_id, set())
                    v = view(lent, [c for c in lent.free_cpus if c not in busy],
                             lent.free_mem - reserved_mem.get(slot_id, 0))
                    if v is not None and (v.queued or v.free_cpus):
                        views[slot_id] = v
        return list(views.values())

    def running_by_user(self) -> dict[int, int]:
        """uid -> invocations on slots (dispatched or running), as last read."""
        return dict(self.by_user)
