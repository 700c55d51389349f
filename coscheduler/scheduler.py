"""Placement: which queued invocation runs on which lent cores. Pure logic, no I/O.

The daemon (and the trace simulator of ``faas-admin analyze``) turn their state into
``SlotView`` and ``PendingInvocation`` values, call ``place`` and act on the result.

Rules:
- an invocation goes only to a slot with enough free lent cores and memory, and whose
  lend lasts at least the invocation's timeout (a function must be able to finish
  before the batch job takes its cores back);
- higher priority first; within a priority, users take turns (round robin in order of
  their oldest waiting invocation), so one user's flood does not starve another;
  each user's invocations stay FIFO;
- among fitting slots, prefer one with a warm executor of the same function, then the
  one with the least free cores that still fits (keeps big holes for big requests).

Cost: one pass over the queue; an invocation shape (cores, memory, timeout) that found
no slot is not tried again this tick, and the pass stops once no slot has a free core,
so a tick is O(queue + slots x distinct shapes), not O(queue x slots).
"""
from __future__ import annotations

import heapq
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Iterable, Optional


@dataclass
class SlotView:
    """Free capacity on one lend (one batch job on one node)."""

    slot_id: str
    free_cpus: list[int]  # lent Slurm core ids not in use, ascending
    free_mem_mb: int
    lend_end: Optional[float]  # unix seconds at which the lend ends; None: no limit known
    warm_functions: frozenset[str] = field(default_factory=frozenset)

    def remaining(self, now: float) -> float:
        return float("inf") if self.lend_end is None else self.lend_end - now


@dataclass(frozen=True)
class PendingInvocation:
    invocation_id: int
    user: int
    function: str
    cores: int
    mem_mb: int
    timeout_s: float
    priority: int = 0
    submitted_at: float = 0.0


@dataclass(frozen=True)
class Placement:
    invocation_id: int
    slot_id: str
    cpus: tuple[int, ...]  # the lent Slurm core ids this invocation owns while it runs
    mem_mb: int


def fair_order(pending: Iterable[PendingInvocation]) -> list[PendingInvocation]:
    """Priority classes high to low; users round robin inside a class; FIFO per user."""
    by_class: dict[int, dict[int, deque[PendingInvocation]]] = defaultdict(lambda: defaultdict(deque))
    for inv in sorted(pending, key=lambda p: (p.submitted_at, p.invocation_id)):
        by_class[inv.priority][inv.user].append(inv)
    ordered: list[PendingInvocation] = []
    for priority in sorted(by_class, reverse=True):
        queues = by_class[priority]
        # Heap of (turn, oldest submit time, user): each user's k-th invocation has turn k.
        heap = [(0, q[0].submitted_at, user) for user, q in queues.items()]
        heapq.heapify(heap)
        while heap:
            turn, _, user = heapq.heappop(heap)
            q = queues[user]
            ordered.append(q.popleft())
            if q:
                heapq.heappush(heap, (turn + 1, q[0].submitted_at, user))
    return ordered


def _fits(slot: SlotView, inv: PendingInvocation, now: float) -> bool:
    return (
        len(slot.free_cpus) >= inv.cores
        and slot.free_mem_mb >= inv.mem_mb
        and slot.remaining(now) >= inv.timeout_s
    )


def place(
    pending: Iterable[PendingInvocation], slots: Iterable[SlotView], now: float
) -> list[Placement]:
    """Assign queued invocations to free lent capacity. ``slots`` is not modified."""
    open_slots = [
        SlotView(s.slot_id, list(s.free_cpus), s.free_mem_mb, s.lend_end, s.warm_functions)
        for s in slots
        if s.free_cpus and s.remaining(now) > 0
    ]
    placements: list[Placement] = []
    failed_shapes: set[tuple[int, int, float]] = set()
    for inv in fair_order(pending):
        if not open_slots:
            break
        shape = (inv.cores, inv.mem_mb, inv.timeout_s)
        if shape in failed_shapes or inv.cores < 1:
            continue
        best: Optional[SlotView] = None
        best_key: tuple[int, int] = (0, 0)
        for slot in open_slots:
            if not _fits(slot, inv, now):
                continue
            key = (0 if inv.function in slot.warm_functions else 1, len(slot.free_cpus))
            if best is None or key < best_key:
                best, best_key = slot, key
        if best is None:
            failed_shapes.add(shape)
            continue
        cpus = tuple(best.free_cpus[: inv.cores])
        del best.free_cpus[: inv.cores]
        best.free_mem_mb -= inv.mem_mb
        placements.append(Placement(inv.invocation_id, best.slot_id, cpus, inv.mem_mb))
        if not best.free_cpus:
            open_slots.remove(best)
    return placements
