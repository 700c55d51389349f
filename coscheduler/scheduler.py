"""Placement: which queued invocation runs on which lent cores. Pure logic, no I/O.

The daemon (and the trace simulator of ``faas-admin analyze``) turn their state into
``SlotView`` and ``PendingInvocation`` values, call ``place`` and act on the result.

Rules:
- an invocation goes only to a slot with enough free lent cores and memory, and whose
  lend lasts at least the invocation's timeout (a function must be able to finish
  before the batch job takes its cores back);
- priority classes, high to low; a lower class only gets what the higher ones cannot use;
- within a class, fair share between users: the next invocation placed is the one of
  the user with the least (running + placed this tick) / share, ties to the user whose
  head invocation waited longest; so one user's 100,000 invocations do not starve another
  user's 10, and a user who already runs a lot yields to one who runs little;
- a user at their running quota (``Policy``) gets nothing more this tick;
- each user's invocations stay FIFO (those that fit nowhere are passed over);
- among fitting slots, prefer one with a warm executor of the same function, then the
  one with the fewest free cores that still fits (keeps big holes for big requests).

Cost. Slots are indexed by free capacity: for each request shape (cores, memory,
timeout), and for each (function, shape) among warm slots, a min-heap of the slots that
can hold it, keyed by free cores. Capacity on a slot only shrinks during a tick, so a
slot that cannot hold a shape now never can again: it leaves that heap for good, and a
heap entry made stale by a placement is re-keyed when it surfaces. A shape that found no
slot is not tried again. So a tick costs O(Q + U log U) to group the queue, O(S) per
distinct shape to build its heap, and O(log S) per placement: not O(Q x S). The pass
ends as soon as no lent core is free.

Owns: placement (pure functions). May not touch: the database, sockets, time (``now`` is passed in).
"""
from __future__ import annotations

import gc
import heapq
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Iterable, Mapping, NamedTuple, Optional


@dataclass
class SlotView:
    """Free capacity on one lend (one batch job on one node)."""

    slot_id: str
    free_cpus: list[int]  # lent Slurm core ids not in use, ascending
    free_mem_mb: int
    lend_end: Optional[float]  # unix seconds at which the lend ends; None: no limit known
    warm_functions: frozenset[str] = field(default_factory=frozenset)
    # Lent cores in use, for dispatch-ahead (``place_ahead``). Cores leased to hot clients
    # are neither free nor here.
    queued: Mapping[int, "Lane"] = field(default_factory=dict)

    def remaining(self, now: float) -> float:
        return float("inf") if self.lend_end is None else self.lend_end - now


class Lane(NamedTuple):
    """One lent core in use: its invocations run one after another.

    ``count``: invocations on it (running or waiting at the agent); ``backlog_s``: seconds
    of work expected on it; ``mem_mb``: the most memory one of them holds per core (their
    memory / their cores). Only one runs on a core at a time, so the memory a slot's work
    can hold at once is at most the sum of its lanes' ``mem_mb``: that is what the daemon
    counts as used, and what a waiting invocation adds only where it needs more."""

    count: int
    backlog_s: float
    mem_mb: float


NO_LANE = Lane(0, 0.0, 0.0)  # a free core


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


@dataclass(frozen=True)
class Policy:
    """Per-user limits and weights of the fair share.

    ``max_running``: invocations a user may have on slots at once (None: no limit);
    ``user_max_running`` overrides it per uid. ``shares``: a user's weight (default 1).
    """

    max_running: Optional[int] = None
    user_max_running: Mapping[int, int] = field(default_factory=dict)
    shares: Mapping[int, float] = field(default_factory=dict)

    def running_limit(self, user: int) -> Optional[int]:
        return self.user_max_running.get(user, self.max_running)

    def share(self, user: int) -> float:
        return max(self.shares.get(user, 1.0), 1e-9)


class _Open:
    """A slot's capacity while a tick places work on it."""

    __slots__ = ("slot_id", "cpus", "free", "mem", "remaining", "warm", "seq")

    def __init__(self, view: SlotView, remaining: float, seq: int):
        self.slot_id = view.slot_id
        self.cpus = list(view.free_cpus)
        self.free = len(self.cpus)
        self.mem = view.free_mem_mb
        self.remaining = remaining
        self.warm = view.warm_functions
        self.seq = seq


class _Index:
    """Heaps of slots by free cores, built on first use for each request shape."""

    def __init__(self, slots: list[_Open]):
        self.slots = slots
        self.warm: dict[str, list[_Open]] = {}
        for o in slots:
            for fn in o.warm:
                self.warm.setdefault(fn, []).append(o)
        self.heaps: dict[tuple, list] = {}

    def _heap(self, key: tuple, pool: list[_Open], cores: int, mem: int, timeout: float) -> list:
        h = self.heaps.get(key)
        if h is None:
            h = [(o.free, o.seq, o) for o in pool if o.free >= cores and o.mem >= mem and o.remaining >= timeout]
            heapq.heapify(h)
            self.heaps[key] = h
        return h

    @staticmethod
    def _best(h: list, cores: int, mem: int) -> Optional[_Open]:
        while h:
            free, seq, o = h[0]
            if o.free < cores or o.mem < mem:
                heapq.heappop(h)  # capacity only shrinks: it never fits this shape again
            elif o.free != free:
                heapq.heapreplace(h, (o.free, seq, o))  # stale key: re-key and look again
            else:
                return o
        return None

    def find(self, inv: PendingInvocation) -> Optional[_Open]:
        shape = (inv.cores, inv.mem_mb, inv.timeout_s)
        warm = self.warm.get(inv.function)
        if warm:
            o = self._best(self._heap(("w", inv.function, shape), warm, *shape), inv.cores, inv.mem_mb)
            if o is not None:
                return o
        return self._best(self._heap(("c", shape), self.slots, *shape), inv.cores, inv.mem_mb)


_FIFO = attrgetter("submitted_at", "invocation_id")


def _by_class(pending: Iterable[PendingInvocation]) -> tuple[dict[int, dict[int, list[PendingInvocation]]], int]:
    """Group by priority class and user, FIFO per user; also count the distinct shapes."""
    classes: dict[int, dict[int, list[PendingInvocation]]] = {}
    unsorted: list[list[PendingInvocation]] = []
    shapes = set()
    for inv in pending:
        shapes.add((inv.cores, inv.mem_mb, inv.timeout_s))
        users = classes.get(inv.priority)
        if users is None:
            users = classes[inv.priority] = {}
        q = users.get(inv.user)
        if q is None:
            users[inv.user] = [inv]
        else:
            last = q[-1]
            if inv.submitted_at < last.submitted_at or (
                    inv.submitted_at == last.submitted_at and inv.invocation_id < last.invocation_id):
                unsorted.append(q)
            q.append(inv)
    for q in unsorted:  # the database hands them over in order: usually none
        q.sort(key=_FIFO)
    return classes, len(shapes)


def place(
    pending: Iterable[PendingInvocation],
    slots: Iterable[SlotView],
    now: float,
    running: Optional[Mapping[int, int]] = None,
    policy: Optional[Policy] = None,
) -> list[Placement]:
    """Assign queued invocations to free lent capacity. Inputs are not modified.

    ``running``: invocations each user already has on slots (fair share and quotas).
    """
    running = running or {}
    policy = policy or Policy()
    open_slots: list[_Open] = []
    for s in slots:
        rem = s.remaining(now)
        if s.free_cpus and rem > 0 and s.free_mem_mb > 0:
            open_slots.append(_Open(s, rem, len(open_slots)))
    free_cores = sum(o.free for o in open_slots)
    placements: list[Placement] = []
    if not free_cores:
        return placements
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a tick allocates many small objects and frees them all at the end
    try:
        return _place(pending, open_slots, free_cores, running, policy)
    finally:
        if gc_was_enabled:
            gc.enable()


def _place(pending: Iterable[PendingInvocation], open_slots: list[_Open], free_cores: int,
           running: Mapping[int, int], policy: Policy) -> list[Placement]:
    placements: list[Placement] = []
    index = _Index(open_slots)
    failed: set[tuple] = set()  # shapes that found no slot this tick
    usage: dict[int, int] = {}
    classes, n_shapes = _by_class(pending)
    for priority in sorted(classes, reverse=True):
        users = classes[priority]
        cursor = dict.fromkeys(users, 0)
        heap = []
        for user, q in users.items():
            used = usage.setdefault(user, running.get(user, 0))
            heap.append((used / policy.share(user), q[0].submitted_at, user))
        heapq.heapify(heap)
        while heap and free_cores and len(failed) < n_shapes:
            _, _, user = heapq.heappop(heap)
            limit = policy.running_limit(user)
            if limit is not None and usage[user] >= limit:
                continue  # at quota: the rest waits for a later tick
            q, i = users[user], cursor[user]
            placed = None
            while i < len(q):
                inv = q[i]
                i += 1
                shape = (inv.cores, inv.mem_mb, inv.timeout_s)
                if shape in failed:
                    continue
                if inv.cores < 1:
                    failed.add(shape)
                    continue
                slot = index.find(inv)
                if slot is None:
                    failed.add(shape)  # warm slots are a subset: nothing else fits either
                    continue
                cpus = tuple(slot.cpus[: inv.cores])
                del slot.cpus[: inv.cores]
                slot.free -= inv.cores
                slot.mem -= inv.mem_mb
                free_cores -= inv.cores
                placed = Placement(inv.invocation_id, slot.slot_id, cpus, inv.mem_mb)
                break
            cursor[user] = i
            if placed is None:
                continue  # nothing of this user fits anywhere
            placements.append(placed)
            usage[user] += 1
            if i < len(q):
                heapq.heappush(heap, (usage[user] / policy.share(user), q[i].submitted_at, user))
    return placements


def place_ahead(
    pending: Iterable[PendingInvocation],
    slots: Iterable[SlotView],
    now: float,
    running: Optional[Mapping[int, int]] = None,
    policy: Optional[Policy] = None,
    depth: Optional[Mapping[str, int]] = None,
    run_time: Optional[Mapping[str, float]] = None,
) -> list[Placement]:
    """``place`` on free cores, then dispatch-ahead: invocations of short functions wait at
    the agent behind the one running on a lent core, so that the next starts the moment
    the core frees, without a round trip through the co-scheduler.

    ``depth``: function -> how many of its invocations may wait on one core (absent: none);
    ``run_time``: function -> its expected run time in seconds. Round k (1, 2, ...) offers
    the cores that carry k invocations (``SlotView.queued``), to the invocations whose
    function allows k. A lend qualifies only if it outlasts the work expected on the core
    before the invocation plus its timeout (the agent checks again when it starts one, and
    hands it back unstarted if the lend got too short). A waiting invocation needs memory
    only where it holds more per core than its lane's ``mem_mb`` (see ``Lane``): in a
    stream of one function's invocations, none. Cores are bucketed by load, so a round
    costs O(waiting + cores at that load); one round per load some core carries, at most
    max(depth). Inputs are not modified.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in place(): many small objects, all freed at the end
    try:
        return _place_ahead(list(pending), list(slots), now, dict(running or {}), policy, depth or {},
                            run_time or {})
    finally:
        if gc_was_enabled:
            gc.enable()


def _place_ahead(pending: list[PendingInvocation], slots: list[SlotView], now: float, running: dict[int, int],
                 policy: Optional[Policy], depth: Mapping[str, int], run_time: Mapping[str, float]
                 ) -> list[Placement]:
    placements = place(pending, slots, now, running, policy)
    placed = {p.invocation_id for p in placements}
    waiting = [inv for inv in pending if inv.invocation_id not in placed and depth.get(inv.function, 0) > 0]
    if not waiting:
        return placements
    by_id = {s.slot_id: s for s in slots}
    mem = {s.slot_id: s.free_mem_mb for s in slots}
    lanes: dict[tuple[str, int], Lane] = {}
    levels: dict[int, dict[str, set[int]]] = {}  # invocations on a core -> slot -> cores
    for s in slots:
        for c, lane in s.queued.items():
            lanes[s.slot_id, c] = Lane(*lane)
            levels.setdefault(lane[0], {}).setdefault(s.slot_id, set()).add(c)
    pending_by_id = {inv.invocation_id: inv for inv in pending}

    def extra_mem(p: Placement) -> float:
        per_core = p.mem_mb / len(p.cpus)
        return sum(max(0.0, per_core - lanes.get((p.slot_id, c), NO_LANE).mem_mb) for c in p.cpus)

    def account(p: Placement, added_mem: float) -> None:
        inv = pending_by_id[p.invocation_id]
        for c in p.cpus:
            n, backlog, lane_mem = lanes.get((p.slot_id, c), NO_LANE)
            if n:
                levels[n][p.slot_id].discard(c)
            lanes[p.slot_id, c] = Lane(n + 1, backlog + run_time.get(inv.function, inv.timeout_s),
                                       max(lane_mem, p.mem_mb / len(p.cpus)))
            levels.setdefault(n + 1, {}).setdefault(p.slot_id, set()).add(c)
        mem[p.slot_id] -= added_mem
        running[inv.user] = running.get(inv.user, 0) + 1

    for p in placements:
        account(p, p.mem_mb)  # on free cores: new lanes, their whole memory
    level = 0
    while waiting:
        # the next load at which some core can take one more (levels grow as we place)
        level = min((n for n, bucket in levels.items() if n > level and any(bucket.values())), default=0)
        if not level:
            break
        waiting = [inv for inv in waiting if depth.get(inv.function, 0) >= level]
        views = []
        for slot_id, cores in levels.get(level, {}).items():
            if cores:
                s = by_id[slot_id]
                backlog = max(lanes[slot_id, c].backlog_s for c in cores)
                end = None if s.lend_end is None else s.lend_end - backlog
                # memory is checked below, per lane: place() sees none of it
                views.append(SlotView(slot_id, sorted(cores), 1 << 62, end, s.warm_functions))
        for p in place(waiting, views, now, running, policy) if views and waiting else []:
            added = extra_mem(p)
            if added <= mem[p.slot_id]:
                account(p, added)
                placements.append(p)
                placed.add(p.invocation_id)
        waiting = [inv for inv in waiting if inv.invocation_id not in placed]
    return placements


def fair_order(pending: Iterable[PendingInvocation], running: Optional[Mapping[int, int]] = None,
               policy: Optional[Policy] = None) -> list[PendingInvocation]:
    """The order ``place`` considers invocations in when everything fits (for tests and tools)."""
    running = running or {}
    policy = policy or Policy()
    out: list[PendingInvocation] = []
    usage: dict[int, int] = {}
    classes, _ = _by_class(pending)
    for priority in sorted(classes, reverse=True):
        users = classes[priority]
        cursor = dict.fromkeys(users, 0)
        heap = [((usage.setdefault(u, running.get(u, 0))) / policy.share(u), q[0].submitted_at, u)
                for u, q in users.items()]
        heapq.heapify(heap)
        while heap:
            _, _, user = heapq.heappop(heap)
            q = users[user]
            out.append(q[cursor[user]])
            cursor[user] += 1
            usage[user] += 1
            if cursor[user] < len(q):
                heapq.heappush(heap, (usage[user] / policy.share(user), q[cursor[user]].submitted_at, user))
    return out
