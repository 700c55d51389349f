"""What a sysadmin sees of the service: one overview, for `faas-admin status` and Prometheus.

``overview`` reads the database (slots, and the queue grouped by state and by user, both
served by indexes, so it stays fast at 100,000 queued invocations) and the hub (agent
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
    by_state = dict(s.execute(select(D.Invocation.state, func.count()).group_by(D.Invocation.state)).all())
    by_user: dict[str, dict[str, int]] = {}
    for uid, state, n in s.execute(select(D.Invocation.owner_uid, D.Invocation.state, func.count())
                                   .where(D.Invocation.state.in_(ACTIVE))
                                   .group_by(D.Invocation.owner_uid, D.Invocation.state)):
        by_user.setdefault(str(uid), {})[state] = n
    lent_core_s = sum(len(sl.slurm_cpus) * max(0.0, ((sl.revoked_at.timestamp() if sl.revoked_at else now)
                                                      - sl.lent_at.timestamp())) for sl in slots)
    m = hub.metrics.snapshot()
    return {
        "health": {"uptime_s": round(m["uptime_s"], 1),
                   "steps_p99_ms": {k: round(v["p99_s"] * 1e3, 2) for k, v in m["steps"].items()}},
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
