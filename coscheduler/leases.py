"""Hot invocations, the co-scheduler's side: lease a warm executor to one client.

The rFaaS model: a client asks for a lease on a function (LEASE, munge-authenticated);
the co-scheduler reserves the function's cores and memory on a lent slot, as a queued
invocation would use them, and tells the slot's agent (LEASE_START, with a fresh random
token). The agent dedicates a warm executor to the lease, grants it the token, and
reports its endpoint (LEASE_READY). The client polls LEASE_STATUS until the lease is
ready, then calls the executor directly over ZeroMQ with the token, without the
co-scheduler on the path. A client that asks for RMA (LEASE ``fabric`` = {provider,
domain}) has it passed on in LEASE_START; if the node's agent and executor can serve it,
LEASE_READY and then LEASE_STATUS carry ``rma`` = {control, provider}, where the client
attaches with the same token (faas_runtime.rma). The lease ends when the client releases it (LEASE_RELEASE ->
LEASE_END to the agent), when it expires (the agent ends it), or when the lend is
revoked: the executor is stopped, tells its client LEASE_ENDED, and the agent reports
LEASE_ENDED here, which frees the reservation.

A batch job that grows takes its memory back (the agent's memory guard,
faas_runtime/memory_watch.py): the slot's ``mem_mb`` follows the agent's LEND (0 for the
hold-down after a shrink), so ``_fit`` grants no lease there; a LEASE_START that crossed the
shrink is refused by the agent (LEASE_FAILED), and leases the job needs the memory of are
ended by it (LEASE_ENDED, the reason says the lend shrank).

Leases live in memory: they last minutes and every party can tell when one is gone (a
restarted co-scheduler forgets them; the agents end them at their expiry).

Installed with ``install(hub, clients, agents, dispatcher)``: request handlers for the
client and agent message types, ``reserve`` for the scheduling step, and ``slot_revoked``
for the agents' room. It talks to the rest only through the hub (coscheduler/hub.py).
LEASE_READY, LEASE_FAILED and LEASE_ENDED count only from the agent of the lease's node.

A memory lease (LEASE ``kind`` = "memory", ``size_bytes``; ``slurm_faas.remote_memory``) is
the same machinery with a built-in function: it needs RMA (``fabric``), reserves one lent
core (the server's progress loop) and ``size + MEMORY_OVERHEAD_MB`` of the lend's memory
(placed, refused on a shrunk or closed lend, ended by a revoke exactly as above), and the
agent starts the remote-memory server for it (faas_runtime/memory_lease.py) instead of an
executor; LEASE_STATUS's ``rma`` is where the holder attaches, with the token.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P

from . import db as D
from . import fields as F
from .hub import AgentSession, Hub

log = logging.getLogger("faas.leases")

DEFAULT_DURATION_S = 300.0
MAX_DURATION_S = 3600.0
START_TIMEOUT_S = 60.0  # a lease the agent never readies is failed after this
# A memory server's own process beside the bytes it serves: measured ~100 MiB on tcp;ofi_rxm
# (Python and ZeroMQ ~25, the RMA endpoint's buffers ~70, mapped libraries), flat in its clients.
MEMORY_OVERHEAD_MB = 128


@dataclass
class Lease:
    lease_id: str
    uid: int
    function_id: Optional[int]  # None: a memory lease
    slot_id: str
    node: str
    slurm_cpus: list[int]
    os_cpus: list[int]
    mem_mb: int
    token: str
    expires: float  # monotonic
    created: float  # monotonic
    state: str = "pending"  # pending -> ready -> ended | failed
    endpoint: Optional[str] = None
    reason: Optional[str] = None
    rma: Optional[dict] = None  # {control, provider} when the executor serves the lease over RMA
    kind: str = "function"  # or "memory" (remote memory: the built-in memory server)
    size_bytes: int = 0  # a memory lease's size

    @property
    def holds_capacity(self) -> bool:
        return self.state in ("pending", "ready") and time.monotonic() < self.expires


class Leases:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.leases: dict[str, Lease] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)  # ids of a restarted co-scheduler never collide

    # -- capacity -------------------------------------------------------------------------

    def reserve(self, busy: dict[str, set[int]], used_mem: dict[str, int]) -> None:
        """Add the cores and memory of live leases to what the scheduling step sees as used."""
        self._expire()
        for lease in self.leases.values():
            if lease.holds_capacity:
                busy.setdefault(lease.slot_id, set()).update(lease.slurm_cpus)
                used_mem[lease.slot_id] = used_mem.get(lease.slot_id, 0) + lease.mem_mb

    def _expire(self) -> None:
        now = time.monotonic()
        for lease_id, lease in list(self.leases.items()):
            if lease.state == "pending" and now - lease.created > START_TIMEOUT_S:
                lease.state, lease.reason = "failed", "the executor did not start in time"
            if now > lease.expires + 60 or (lease.state in ("ended", "failed") and now > lease.expires):
                del self.leases[lease_id]  # kept a while after the end, so the client can read why

    # -- client requests ----------------------------------------------------------------

    def on_lease(self, s: Session, uid: int, msg: dict) -> dict:
        kind = msg.get("kind", "function")
        if kind == "memory":
            return self._memory_lease(s, uid, msg)
        if kind != "function":
            raise self._failed(P.E_INVALID, f"a lease is of a function or of memory, not {str(kind)[:64]!r}")
        name = F.text(msg.get("function"), "function", 128)
        fn = s.scalar(select(D.Function).where(D.Function.owner_uid == uid, D.Function.name == name))
        if fn is None or getattr(fn, "deleted_at", None) is not None:
            raise self._failed(P.E_NOT_FOUND, f"no function named {name!r} of yours (register it first)")
        duration, fabric = self._duration(msg), self._fabric(msg)
        slot, cpus = self._fit(s, fn.cores, fn.mem_mb, min(duration, fn.timeout_s))
        lease = self._add(uid=uid, function_id=fn.id, slot=slot, cpus=cpus, mem_mb=fn.mem_mb,
                          duration=duration)
        self.hub.send_agent(slot.node, P.LEASE_START, lease_id=lease.lease_id,
                            token=lease.token, slot_id=slot.id, job_id=slot.job_id, os_cpus=lease.os_cpus,
                            mem_mb=fn.mem_mb, uid=fn.owner_uid, function_id=fn.id,
                            entrypoint=fn.entrypoint, code_dir=fn.code_dir, image=fn.image,
                            runtime=fn.runtime, version=fn.version, duration_s=duration,
                            **({"fabric": fabric} if fabric else {}))
        log.info("lease %s: function %s of uid %d on %s cores %s", lease.lease_id, fn.name, uid, slot.id, cpus)
        return {"lease_id": lease.lease_id, "state": lease.state}

    def _memory_lease(self, s: Session, uid: int, msg: dict) -> dict:
        """Remote memory: ``size_bytes`` of a lend's memory served by the built-in memory
        server, as ``uid``, on one lent core (its RMA progress loop)."""
        size = F.whole(msg.get("size_bytes"), "size_bytes", 1, F.MAX_MEM_MB << 20)
        duration, fabric = self._duration(msg), self._fabric(msg)
        if fabric is None:
            raise self._failed(P.E_INVALID, "remote memory is served over libfabric RMA: ask with fabric = "
                                            "{provider, domain} (FAAS_FABRIC)")
        mem_mb = -(-size // (1 << 20)) + MEMORY_OVERHEAD_MB
        slot, cpus = self._fit(s, 1, mem_mb, duration)
        lease = self._add(uid=uid, function_id=None, slot=slot, cpus=cpus, mem_mb=mem_mb, duration=duration,
                          kind="memory", size_bytes=size)
        self.hub.send_agent(slot.node, P.LEASE_START, kind="memory", size_bytes=size, lease_id=lease.lease_id,
                            token=lease.token, slot_id=slot.id, job_id=slot.job_id, os_cpus=lease.os_cpus,
                            mem_mb=mem_mb, uid=uid, duration_s=duration, fabric=fabric)
        log.info("lease %s: %d bytes of remote memory for uid %d on %s core %s", lease.lease_id, size, uid, slot.id,
                 cpus)
        return {"lease_id": lease.lease_id, "state": lease.state}

    def _add(self, *, slot, cpus: list[int], duration: float, **fields) -> Lease:
        now = time.monotonic()
        lease = Lease(lease_id=f"L{self._prefix}-{next(self._ids)}", slot_id=slot.id, node=slot.node, slurm_cpus=cpus,
                    os_cpus=slot.os_cpus_of(cpus), token=secrets.token_urlsafe(24), expires=now + duration,
                    created=now, **fields)
        self.leases[lease.lease_id] = lease
        return lease

    @staticmethod
    def _duration(msg: dict) -> float:
        return min(F.number(msg.get("duration_s", DEFAULT_DURATION_S), "duration_s", 0, 1e9, lo_open=True),
                   MAX_DURATION_S)

    def _fabric(self, msg: dict) -> Optional[dict]:
        """The RMA the client asks for: {provider, domain}, or None."""
        fabric = msg.get("fabric")
        if fabric is None:
            return None
        if not (isinstance(fabric, dict) and isinstance(fabric.get("provider"), str)
                and len(fabric["provider"]) < 64 and len(str(fabric.get("domain") or "")) < 256):
            raise self._failed(P.E_INVALID, "fabric must be a map with a provider name")
        return {"provider": fabric["provider"], "domain": str(fabric.get("domain") or "")}

    def on_status(self, s: Session, uid: int, msg: dict) -> dict:
        lease = self._owned(uid, msg)
        self._expire()
        reply = {"lease_id": lease.lease_id, "state": lease.state, "reason": lease.reason,
                 "expires_in": round(lease.expires - time.monotonic(), 3)}
        if lease.kind == "memory":
            reply.update(kind="memory", size_bytes=lease.size_bytes)
        if lease.state == "ready":
            reply.update(endpoint=lease.endpoint, token=lease.token, cpus=lease.os_cpus, slot_id=lease.slot_id)
            if lease.rma:
                reply["rma"] = lease.rma
        return reply

    def on_release(self, s: Session, uid: int, msg: dict) -> dict:
        lease = self._owned(uid, msg)
        if lease.state in ("pending", "ready"):
            self._end(lease, "released by the client")
        return {"lease_id": lease.lease_id, "state": lease.state}

    def _owned(self, uid: int, msg: dict) -> Lease:
        lease = self.leases.get(str(msg.get("lease_id")))
        if lease is None or (lease.uid != uid and uid != 0):
            raise self._failed(P.E_NOT_FOUND, f"no lease {msg.get('lease_id')} of yours")
        return lease

    def _end(self, lease: Lease, reason: str) -> None:
        lease.state, lease.reason = "ended", reason
        self.hub.send_agent(lease.node, P.LEASE_END, lease_id=lease.lease_id, reason=reason)
        self.hub.mark_dirty()

    def _fit(self, s: Session, cores: int, mem_mb: int, min_s: float):
        """A lent slot with ``cores`` free cores and ``mem_mb`` free memory (as the lend offers
        it now: 0 on a closed lend) that lasts ``min_s`` more: (slot, its Slurm cores)."""
        now = time.time()
        busy: dict[str, set[int]] = {}
        used_mem: dict[str, int] = {}
        slots = [sl for sl in D.active_slots(s) if sl.node in self.hub.sessions]
        for inv in D.on_slot(s, [sl.id for sl in slots]):
            busy.setdefault(inv.slot_id, set()).update(inv.slurm_cpus or [])
            used_mem[inv.slot_id] = used_mem.get(inv.slot_id, 0) + inv.mem_mb
        self.reserve(busy, used_mem)
        for sl in slots:
            free = [c for c in sl.slurm_cpus if c not in busy.get(sl.id, ())]
            lend_end = sl.lend_end
            if len(free) >= cores and sl.mem_mb - used_mem.get(sl.id, 0) >= mem_mb and \
                    (lend_end is None or lend_end - now >= min_s):
                return sl, free[:cores]
        raise self._failed(P.E_NO_CAPACITY, f"no lent capacity fits {cores} core(s) and {mem_mb} MiB now")

    @staticmethod
    def _failed(code: str, message: str) -> Exception:
        # The daemon turns a ProtocolError into a typed ERROR reply (its own RequestFailed
        # class is a different object when the daemon runs as __main__).
        return P.ProtocolError(code, message)

    # -- agent messages -----------------------------------------------------------------

    def on_agent(self, s: Session, session: AgentSession, msg: dict) -> None:
        lease = self.leases.get(str(msg.get("lease_id")))
        if lease is None:
            return  # a lease this co-scheduler does not know (it restarted): nothing holds it
        if lease.node != session.node:
            log.warning("Security violation: the agent of %s sent %s for lease %s on %s", session.node,
                        msg["type"], lease.lease_id, lease.node)
            raise self._failed(P.E_AUTH, f"lease {lease.lease_id} is not on node {session.node}")
        kind = msg["type"]
        if kind == P.LEASE_READY and lease.state == "pending":
            lease.state, lease.endpoint = "ready", F.text(msg.get("endpoint"), "endpoint", 256)
            rma = msg.get("rma")
            if isinstance(rma, dict) and isinstance(rma.get("control"), str) and isinstance(rma.get("provider"), str) \
                    and len(rma["control"]) < 256 and len(rma["provider"]) < 64:
                lease.rma = {"control": rma["control"], "provider": rma["provider"]}
        elif kind == P.LEASE_FAILED:
            lease.state, lease.reason = "failed", str(msg.get("reason", "the executor could not start"))[:1000]
            self.hub.mark_dirty()
        elif kind == P.LEASE_ENDED and lease.state in ("pending", "ready"):
            lease.state, lease.reason = "ended", str(msg.get("reason", "ended"))[:1000]
            self.hub.mark_dirty()

    def slot_revoked(self, slot_id: str, reason: str) -> None:
        for lease in self.leases.values():
            if lease.slot_id == slot_id and lease.state in ("pending", "ready"):
                lease.state, lease.reason = "ended", f"slot {slot_id} revoked: {reason}"


def install(hub: Hub, clients, agents, dispatcher) -> Leases:
    """Attach leasing to the rooms through their declared extension points: request and
    agent-message handlers, a capacity reservation for placement, and revoke notices."""
    leases = Leases(hub)
    clients.handlers.update({P.LEASE: leases.on_lease, P.LEASE_STATUS: leases.on_status,
                             P.LEASE_RELEASE: leases.on_release})
    for kind in P.LEASE_AGENT_TYPES:
        agents.handlers[kind] = leases.on_agent
    dispatcher.reservations.append(leases.reserve)
    agents.on_revoke.append(leases.slot_revoked)
    return leases
