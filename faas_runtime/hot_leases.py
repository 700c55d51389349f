"""Hot leases on the node agent: one warm executor dedicated to one client for a while
(``coscheduler.leases`` grants them; ``faas_runtime.client`` calls the executor directly).

Owns: LEASE_START (refused when the memory guard shrank the lend below it; else an
executor for the lease, or for a memory lease (``kind="memory"``) the remote-memory server
(faas_runtime.memory_lease, started and confined as an executor, never reused), the GRANT
with its token and, when the client asked for RMA and this node's fabric allows it, what the
executor opens,
``faas_runtime.fabric``), the lease's clock (not ready in time, expired) and LEASE_END.

May not touch: executor processes beyond asking for one (``_executor_for``), calling it
(``_call``) or stopping it (``_stop``), all faas_runtime.executors; the co-scheduler's socket
(only through ``send``); the slots (it only looks a slot up). ``HotLeases`` is mixed into
``faas_runtime.agent.Agent``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from . import protocol as P
from .confinement import ConfinementError
from .containers import ContainerError
from .executors import EXECUTOR_READY_TIMEOUT_S, Executor
from .fabric import FabricConfig

MEMORY_SERVER = "faas_runtime.memory_lease"  # the program of a memory lease (its executor key's entrypoint)

if TYPE_CHECKING:
    from .agent import Slot


class HotLeases:
    """The leases of one agent's executors (mixed into ``Agent``, whose fields below it uses)."""

    node: str
    fabric: FabricConfig
    slots: dict[str, Slot]
    executors: dict[str, Executor]
    # and: send() (faas_runtime.agent), _executor_for(), _spawn_executor(), _call(), _stop() (faas_runtime.executors),
    # lease_refusal() (faas_runtime.memory_watch: a lend the job's growth shrank takes no lease)

    def _lease_start(self, msg: dict) -> None:
        lease_id = str(msg["lease_id"])
        slot = self.slots.get(msg["slot_id"])
        if slot is None or slot.revoked:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=f"slot {msg['slot_id']} is not lent here")
            return
        refused = self.lease_refusal(msg)  # the memory guard shrank or closed the lend (memory_watch)
        if refused is not None:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=refused)
            return
        fabric = self._fabric_for(msg.get("fabric"))
        memory = msg.get("kind") == "memory"
        if memory and fabric is None:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=f"remote memory is served over libfabric RMA, which "
                                                                f"the agent of {self.node} runs without (FAAS_FABRIC)")
            return
        try:
            ex = self._memory_server_for(msg, slot) if memory else self._executor_for(msg, slot)
        except (ContainerError, ConfinementError, OSError, KeyError, ValueError) as exc:
            self.send(P.LEASE_FAILED, lease_id=lease_id, reason=f"could not start the function: {exc}")
            return
        ex.lease_id, ex.lease_token, ex.lease_ready = lease_id, str(msg["token"]), False
        ex.lease_expires = time.monotonic() + float(msg.get("duration_s", 600))
        grant = {}
        if fabric is not None:
            grant["fabric"] = fabric
        self._call(ex, P.GRANT, rid=f"grant:{lease_id}", token=ex.lease_token, cpus=list(msg["os_cpus"]), **grant)

    def _memory_server_for(self, msg: dict, slot: Slot) -> Executor:
        """A new remote-memory server for a memory lease: an executor in all but its program
        (as the lease holder, in its own cgroup with the lease's memory, on the lent CPUs)."""
        size, mem_mb = int(msg["size_bytes"]), int(msg["mem_mb"])
        if not 0 < size <= mem_mb << 20:
            raise ValueError(f"a memory lease of {size} bytes does not fit its {mem_mb} MiB")
        key = (slot.slot_id, int(msg["uid"]), MEMORY_SERVER, "", None, "none", mem_mb, f"lease {msg['lease_id']}")
        return self._spawn_executor(key, slot, module=MEMORY_SERVER, args=("--size", str(size)))

    def _fabric_for(self, wanted) -> Optional[dict]:
        """What the executor opens for a lease whose client asked for RMA with ``wanted``
        ({provider, domain}): None when this node's fabric is off or nothing was asked."""
        if not self.fabric.enabled or not isinstance(wanted, dict) or not isinstance(wanted.get("provider"), str):
            return None
        provider = wanted["provider"].strip()
        if not FabricConfig(provider).enabled:
            return None
        domain = self.fabric.domain if provider == self.fabric.provider and self.fabric.domain else \
            str(wanted.get("domain") or "")
        return {"provider": provider, "domain": domain, "no_cqdata": self.fabric.no_cqdata}

    def _lease_tick(self, ex: Executor, now: float) -> None:
        if not ex.lease_ready and now - ex.started_at > EXECUTOR_READY_TIMEOUT_S:
            self._stop(ex, "executor did not start in time")
        if ex.lease_expires is not None and now > ex.lease_expires:
            self._lease_end(ex.lease_id, "the lease expired")

    def _lease_end(self, lease_id: str, reason: str) -> None:
        for ex in self.executors.values():
            if ex.lease_id == lease_id:
                self._call(ex, P.LEASE_END, token=ex.lease_token, reason=reason)
                self.send(P.LEASE_ENDED, lease_id=lease_id, reason=reason)
                ex.lease_id = ex.lease_token = ex.lease_expires = None
                ex.idle_since = time.monotonic()
                if ex.key[2] == MEMORY_SERVER:
                    self._stop(ex, reason)  # revokes and frees the memory at once; never serves again
                return
