"""The scheduling room: fit queued invocations to lent capacity and send RUN.

One step (``step_schedule``) claims queued invocations (one statement: FOR UPDATE SKIP
LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite), fits them to the free lent cores and
memory of slots whose agents hold a session (coscheduler.scheduler.place_ahead, a pure
function), dispatches the placed ones in bulk, and queues RUN for each agent, sent after
the commit. It runs when something changed (``Hub.dirty``), and every second.

May not touch: agent sessions (read only), client requests, Slurm.
"""
from __future__ import annotations

import time
from typing import Callable

from faas_runtime import protocol as P
from faas_runtime.states import State

from . import db as D
from .hub import Hub, fn_key
from .capacity import Capacity
from .scheduler import PendingInvocation, Policy, SlotView, place_ahead

SCHEDULE_EVERY_S = 1.0  # a scheduling pass even when nothing announced a change
# While agents hold work dispatched ahead, the loop runs at most this often: each pass
# then claims, places and commits many invocations at once (a pass costs a few database
# round trips whatever it places). Idle slots are scheduled at once, as before. When every
# lane that took work holds more, the gap grows to half the shortest lane's backlog (the
# work expected on it), at most MAX_PIPELINED_GAP_S: fewer, fuller passes, no core idles.
PIPELINED_GAP_S = 0.01
MAX_PIPELINED_GAP_S = 0.05
# A lend record carries no end time (slurmstepd does not know it): the reconciler asks Slurm
# as soon as a lend arrives (hub.lends_to_check). Until Slurm answered (hub.end_known) a lend
# is not offered, or a function could be dispatched that cannot finish before the job ends;
# after this many reconcile rounds without an answer it is offered as unlimited.
UNKNOWN_END_ROUNDS = 3
# A pass dispatches at most this many (the rest next turn): a pass of 1,000 RUNs held the
# loop for 100 ms and more, with reports and revokes waiting unread meanwhile.
PASS_MAX = 256


class Dispatcher:
    def __init__(self, hub: Hub):
        self.hub = hub
        # Capacity held outside the queue (leases.py: cores and memory leased to hot clients):
        # each adds to the busy cores and used memory of the slots.
        self.reservations: list[Callable[[dict[str, set[int]], dict[str, int]], None]] = []
        self.pipelined = False  # the last pass dispatched work ahead
        self.last_schedule = 0.0
        self.gap_s = PIPELINED_GAP_S  # while pipelined: from the last pass to the next
        self._next_schedule = 0.0
        self.capacity = Capacity(hub)  # placement's memory of the slots and the work on them

    def policy(self) -> Policy:
        cfg = self.hub.config
        return Policy(max_running=cfg.max_running,
                      user_max_running={u: q.max_running for u, q in cfg.user_quotas.items()
                                        if q.max_running is not None},
                      shares=cfg.shares)

    def ahead_depth(self) -> dict[str, int]:
        """How many invocations of each function may wait per lent core: as many as fit in
        ``dispatch_ahead_s`` of its recent mean run time, at most ``dispatch_ahead_max``;
        none for a function never seen or slower than that."""
        cap, budget = self.hub.config.dispatch_ahead_max, self.hub.config.dispatch_ahead_s
        if not cap:
            return {}
        out = {}
        for fn, run_s in self.hub.stats.run_time.items():
            n = min(cap, int(budget / max(run_s, 1e-6)))
            if n:
                out[fn] = n
        return out

    def step_schedule(self) -> None:
        hub = self.hub
        mono = time.monotonic()
        if not hub.dirty and mono < self._next_schedule:
            return
        self.last_schedule = mono
        self.pipelined = False
        self.gap_s = PIPELINED_GAP_S
        hub.dirty = False
        self._next_schedule = mono + SCHEDULE_EVERY_S
        now = time.time()
        unknown_end_s = UNKNOWN_END_ROUNDS * hub.config.reconcile_s
        with hub.database.session(write=True) as s:
            cap = self.capacity
            cap.refresh(s)  # what changed since the last pass (capacity.py)
            if not cap.slots or not hub.sessions:
                return
            busy: dict[str, set[int]] = {}
            used_mem: dict[str, int] = {}
            for reserve in self.reservations:
                reserve(busy, used_mem)
            depth = self.ahead_depth()
            deepest = max(depth.values(), default=0)
            room = cap.room(deepest, hub.config.queue_window)
            if not room:
                return
            # Claim no more of each (priority, user) than the free cores (and the room to
            # dispatch ahead) could take, and as many again for those that fit nowhere
            # (passed over): a tick that places 64 does not read a thousand.
            per_user = min(hub.config.user_window, 2 * room, 2 * PASS_MAX)
            pending = [r for r in D.claim_queued_rows(s, hub.config.queue_window, per_user)
                       if r.id > hub.cancelling.get(r.function_id, 0)]  # a bulk cancel is being written
            if not pending:
                return
            fns = D.functions_by_id(s, {r.function_id for r in pending})
            by_id = {r.id: r for r in pending}
            requests = [
                PendingInvocation(r.id, r.owner_uid, fn_key(r.function_id), fns[r.function_id].cores,
                                  fns[r.function_id].mem_mb, fns[r.function_id].timeout_s, r.priority,
                                  r.created_at.timestamp())
                for r in pending
            ]
            views = cap.views(requests, now, lambda sl: sl.node in hub.sessions and (
                sl.end_time is not None or sl.id in hub.end_known or now - sl.lent_at.timestamp() >= unknown_end_s),
                busy, used_mem, deepest)
            if not views:
                return
            slot_by_id = {v.slot_id: cap.slots[v.slot_id].slot for v in views}
            placements = place_ahead(requests, views, now, cap.running_by_user(), self.policy(), depth,
                                     hub.stats.run_time)
            more = len(placements) > PASS_MAX  # in the fair order place() chose
            del placements[PASS_MAX:]
            if not placements:
                return
            payload = D.payloads(s, [p.invocation_id for p in placements])
            at = D.utcnow()
            changes, runs = [], []
            for p in placements:
                row, slot = by_id[p.invocation_id], slot_by_id[p.slot_id]
                hub.metrics.observe("queue_wait_seconds", max(0.0, now - row.created_at.timestamp()))
                fn, cpus = fns[row.function_id], list(p.cpus)
                os_cpus = slot.os_cpus_of(cpus)
                changes.append(D.Change(row.id, State.QUEUED, State.DISPATCHED, at, f"on {slot.id} cores {cpus}", {
                    "attempts": row.attempts + 1, "slot_id": slot.id, "node": slot.node, "job_id": slot.job_id,
                    "slurm_cpus": cpus, "os_cpus": os_cpus, "mem_mb": p.mem_mb, "dispatched_at": at}))
                # No group: the agent takes the owner's groups from its node's user database.
                runs.append((slot.node, dict(
                    invocation_id=row.id, attempt=row.attempts + 1, slot_id=slot.id, job_id=slot.job_id,
                    cpus=cpus, os_cpus=os_cpus, mem_mb=p.mem_mb, timeout_s=fn.timeout_s, uid=fn.owner_uid,
                    function_id=fn.id, entrypoint=fn.entrypoint, code_dir=fn.code_dir, image=fn.image,
                    runtime=fn.runtime, version=fn.version, sent_at=at.timestamp(),
                    **({P.PAYLOAD_BIN: payload[row.id]} if isinstance(payload[row.id], bytes)
                       else {"payload_json": payload[row.id]}))))
            D.transition_many(s, changes)
            hub.metrics.count("dispatched", len(runs))
            hub.metrics.count("dispatch_passes")  # dispatched / dispatch_passes: the batch a pass carries
            by_node: dict[str, list[dict]] = {}
            for node, fields in runs:
                by_node.setdefault(node, []).append(fields)
            for node, batch in by_node.items():  # sent after this transaction commits (the loop's _guarded)
                hub.work_changed(node)  # placement reads its work again next pass
                if len(batch) == 1:
                    hub.send_agent(node, P.RUN, **batch[0])
                else:
                    hub.send_agent(node, P.RUNS, runs=batch)  # one frame per node per pass
            placed_on = {p.slot_id for p in placements}  # not every view's cores: thousands at scale
            free_cores = {(v.slot_id, c) for v in views if v.slot_id in placed_on for c in v.free_cpus}
            self.pipelined = any((p.slot_id, c) not in free_cores for p in placements for c in p.cpus)
            if more or len(placements) == len(pending):
                hub.mark_dirty()  # the window was used up: there may be more to place now
            elif self.pipelined:
                self.gap_s = self._gap(views, placements, by_id, fns)

    def _gap(self, views: list[SlotView], placements: list, rows: dict, fns: dict) -> float:
        """Half the work expected on the shortest lane that took an invocation this pass
        (PIPELINED_GAP_S .. MAX_PIPELINED_GAP_S)."""
        backlog = {(v.slot_id, c): lane.backlog_s for v in views for c, lane in v.queued.items()}
        run_time = self.hub.stats.run_time
        for p in placements:
            fn = fns[rows[p.invocation_id].function_id]
            for c in p.cpus:
                backlog[p.slot_id, c] = backlog.get((p.slot_id, c), 0.0) + run_time.get(fn_key(fn.id), fn.timeout_s)
        shortest = min(backlog[p.slot_id, c] for p in placements for c in p.cpus)
        return min(MAX_PIPELINED_GAP_S, max(PIPELINED_GAP_S, shortest / 2))

    @property
    def next_pass_at(self) -> float:
        """While pipelined: when the loop runs its next pass (monotonic)."""
        return self.last_schedule + self.gap_s
