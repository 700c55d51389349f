"""Remote memory on a batch job's spare memory: ``slurm_faas.remote_memory``.

    with slurm_faas.remote_memory("1G", duration_s=600) as mem:
        mem.write(0, b"hello")                 # one-sided RMA into the lent memory
        assert mem.read(0, 5) == b"hello"
        buf = mem.buffer(8 << 20)              # a registered buffer: zero-copy reads
        mem.read_into(4096, buf)

A memory lease (coscheduler/leases.py, ``kind="memory"``): the co-scheduler places it on a
lend with that much free memory, the node's agent starts the remote-memory function there
(faas_runtime/memory_lease.py: as you, in a cgroup whose memory limit covers the size, on
the lent CPUs) and this client attaches to it over libfabric RMA with the lease's token
(faas_runtime.remote_memory.RemoteMemory). Nobody without the token attaches.

The batch job wins: when its lend is revoked or shrinks, the memory server zeroes its epoch
before it lets the memory go, and every later access raises ``RemoteMemoryRevoked`` (its
``reason`` from the co-scheduler), never stale data. ``release()`` (or the end of the
``with``) frees the memory on the node at once; so does the lease's end (``duration_s``).
"""
from __future__ import annotations

from typing import Any, Optional, Union

from faas_runtime import protocol as P
from faas_runtime.client import LeaseUnavailable, request_lease
from faas_runtime.fabric import FabricConfig, MemoryRegion
from faas_runtime.queue_client import Client, user_address
from faas_runtime.remote_memory import RemoteMemory, RemoteMemoryLost, RemoteMemoryRevoked, parse_size

__all__ = ["RemoteMemoryLease", "RemoteMemoryLost", "RemoteMemoryRevoked", "remote_memory"]


class RemoteMemoryLease:
    """Remote memory held by a lease: ``read``, ``read_into``, ``write``, ``buffer``, ``size``
    as ``RemoteMemory``; ``release()`` gives it back. Not thread-safe (one endpoint)."""

    def __init__(self, control: Client, status: dict, fabric: FabricConfig, op_timeout_s: float):
        self._control = control
        self.lease_id: str = status["lease_id"]
        self.slot_id: Optional[str] = status.get("slot_id")  # "<job>@<node>": whose lend holds it
        self.cpus: list[int] = status.get("cpus") or []
        self.control_endpoint: str = status["rma"]["control"]
        self.token: str = status["token"]
        self.ended: Optional[str] = None
        self._mem = RemoteMemory(self.control_endpoint, fabric, timeout=op_timeout_s, token=self.token)
        self.size = self._mem.size

    def _revoked(self, exc: RemoteMemoryRevoked) -> RemoteMemoryRevoked:
        """The same error, with the co-scheduler's reason (the lend revoked, shrunk, expired)."""
        if self.ended is None:
            try:
                st = self._control.request(P.LEASE_STATUS, lease_id=self.lease_id)
                if st.get("state") in ("ended", "failed"):
                    self.ended = str(st.get("reason") or st["state"])
            except Exception:  # the co-scheduler cannot say: the transfer's own reason stands
                pass
        out = type(exc)(f"{exc}; the lease ended: {self.ended}" if self.ended else str(exc))
        out.reason = self.ended or str(exc)
        return out

    def _do(self, op, *args: Any) -> Any:
        try:
            return op(*args)
        except RemoteMemoryRevoked as exc:
            raise self._revoked(exc) from None

    def read(self, offset: int, n: int) -> bytes:
        return self._do(self._mem.read, offset, n)

    def read_into(self, offset: int, buf: Any) -> None:
        self._do(self._mem.read_into, offset, buf)

    def write(self, offset: int, data: Any) -> None:
        self._do(self._mem.write, offset, data)

    def buffer(self, size: int) -> MemoryRegion:
        """A registered local buffer for zero-copy ``read_into`` / ``write`` (close it when done)."""
        return self._mem.buffer(size)

    def release(self) -> None:
        """Give the memory back (idempotent): the server on the node frees it at once."""
        self._mem.close()
        if self.ended is None:
            self.ended = "released by the client"
            try:
                self._control.request(P.LEASE_RELEASE, lease_id=self.lease_id)
            except Exception:
                pass  # the lease expires on its own
        self._control.close()

    def __enter__(self) -> "RemoteMemoryLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def remote_memory(size: Union[int, str], *, endpoint: Optional[str] = None, munge_socket: Optional[str] = None,
                  duration_s: float = 300.0, timeout_s: float = 60.0, op_timeout_s: float = 30.0,
                  fabric: Optional[FabricConfig] = None) -> RemoteMemoryLease:
    """Lease ``size`` bytes (an int, or "512M", "2G") of a batch job's spare memory for
    ``duration_s``; waits up to ``timeout_s`` for the server. ``fabric``: the RMA
    configuration (default FAAS_FABRIC / FAAS_FABRIC_DOMAIN); remote memory needs RMA.
    Raises ``LeaseUnavailable`` when no lend has the memory free now."""
    size_bytes = parse_size(size) if isinstance(size, str) else int(size)
    endpoint, munge_socket = user_address(endpoint, munge_socket)
    fabric = FabricConfig.from_env() if fabric is None else fabric
    if not fabric.enabled:
        raise ValueError(f"remote memory needs libfabric RMA, and FAAS_FABRIC is {fabric.provider!r}")
    control = Client(endpoint, munge_socket, timeout_s=min(timeout_s, 30.0))
    st: Optional[dict] = None
    try:
        st = request_lease(control, {"kind": "memory", "size_bytes": size_bytes, "duration_s": duration_s,
                                     "fabric": {"provider": fabric.provider, "domain": fabric.domain}}, timeout_s)
        if not isinstance(st.get("rma"), dict):
            raise LeaseUnavailable(f"lease {st['lease_id']} is ready without a memory server to attach to")
        return RemoteMemoryLease(control, st, fabric, op_timeout_s)
    except BaseException:
        if st is not None:  # granted, but the attach failed: give the memory back now
            try:
                control.request(P.LEASE_RELEASE, lease_id=st["lease_id"])
            except Exception:
                pass
        control.close()
        raise
