"""What a sysadmin sees of the service: one overview, for `faas-admin status` and Prometheus.

``overview`` reads the database (slots, and the queue grouped by user and state in one
walk of an index, so it stays fast at 100,000 queued invocations) and the hub (agent
sessions, warm executors, the loop's metrics). The capacity recovered is the number the
paper exists for: core-seconds lent by batch jobs, and core-seconds functions ran on them
(the latter counted by the loop since it started, from the run times agents report).

Owns no state of its own; may not change anything it reads.
"""
from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from faas_runtime.states import State

from . import db as D
from .db.models import Leader
from .hub import Hub

ACTIVE = [State.QUEUED.value, State.DISPATCHED.value, State.RUNNING.value]


def overview(hub: Hub, s: Session) -> dict:
    now, mono = time.time(), time.monotonic()
    slots = list(s.scalars(select(D.Slot)))
    active = [sl for sl in slots if sl.state == "ACTIVE"]
    used: dict[str, int] = {}
    for slot_id, cpus, _mem, _fn, _timeout in D.slot_usage(s, [sl.id for sl in active]):
        used[slot_id] = used.get(slot_id, 0) + len(cpus or ())
    agents = {}
    for node in sorted({sl.node for sl in active} | set(hub.sessions)):
        mine = [sl for sl in active if sl.node == node]
        session = hub.sessions.get(node)
        agents[node] = {
            "connected": session is not None,
            "last_heartbeat_s": round(mono - session.last_seen, 3) if session else None,
            "lends": len(mine), "cores_lent": sum(len(sl.slurm_cpus) for sl in mine),
            "cores_used": sum(min(used.get(sl.id, 0), len(sl.slurm_cpus)) for sl in mine),
            "mem_lent_mb": sum(sl.mem_mb for sl in mine),
            "warm": sum(len(hub.stats.warm_on(sl.id, mono)) for sl in mine)}
    # One walk of the (owner_uid, state) index serves both counts: grouped in the index's
    # order, with no temporary B-tree (filtering on state first cost 5x at 100,000 queued:
    # bench/bench_status.py).
    by_state: dict[str, int] = {}
    by_user: dict[str, dict[str, int]] = {}
    for uid, state, n in s.execute(select(D.Invocation.owner_uid, D.Invocation.state, func.count())
                                   .group_by(D.Invocation.owner_uid, D.Invocation.state)):
        by_state[state] = by_state.get(state, 0) + n
        if state in ACTIVE:
            by_user.setdefault(str(uid), {})[state] = n
    lent_core_s = sum(len(sl.slurm_cpus) * max(0.0, ((sl.revoked_at.timestamp() if sl.revoked_at else now)
                                                      - sl.lent_at.timestamp())) for sl in slots)
    m = hub.metrics.snapshot()
    leader = s.get(Leader, 1)  # high availability (leader.py): epoch 0 means it was never used
    return {
        "health": {"uptime_s": round(m["uptime_s"], 1),
                   "steps_p99_ms": {k: round(v["p99_s"] * 1e3, 2) for k, v in m["steps"].items()},
                   "ha": {"active": leader.holder, "epoch": leader.epoch,
                          "since": leader.since.isoformat() if leader.since else None}
                   if leader is not None and leader.epoch else None},
        "agents": agents,
        "queue": {"by_state": by_state, "by_user": by_user},
        "throughput_per_s_last_minute": round(m["completed_last_minute"] / 60.0, 2),
        "capacity": {"cores_lent_now": sum(a["cores_lent"] for a in agents.values()),
                     "cores_used_now": sum(a["cores_used"] for a in agents.values()),
                     "mem_lent_mb_now": sum(a["mem_lent_mb"] for a in agents.values()),
                     "lent_core_seconds": round(lent_core_s, 1),
                     "used_core_seconds_since_start": round(m["counters"].get("used_core_seconds", 0.0), 1)},
        "metrics": m,
    }
