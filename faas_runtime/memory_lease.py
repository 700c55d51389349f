"""The remote-memory function on a lend: a MemoryServer the node agent starts for a memory lease.

A memory lease (``slurm_faas.remote_memory``, coscheduler/leases.py ``kind="memory"``) is a
hot lease whose function is built in: the agent starts this process as it starts an
executor (faas_runtime.executors: as the lease holder's uid, never root, in a cgroup of its
own whose memory limit covers the size and whose cpuset is the lent CPUs) and talks to it
over the same private control socket, with the same messages:

  ready      OK ``rid=ready`` with ``endpoint``: the ZeroMQ ROUTER bound at ``--hot-host``,
             which becomes the memory server's control socket (FABRIC_ATTACH, PING)
  GRANT      token, cpus, fabric {provider, domain, no_cqdata}: pin to the lease's CPUs,
             map and register ``--size`` bytes (faas_runtime.remote_memory.MemoryServer,
             which accepts only FABRIC_ATTACH and MEM_REVOKE carrying this token), reply OK
             with ``rma`` = {control, provider}; the agent sends LEASE_READY with it
  LEASE_END  revoke (epoch 0, registration closed, pages freed), reply OK, exit
  SIGTERM    the lend is revoked or shrank: the same, then exit

A failure to serve (no binding, no provider, no memory) is printed and the process exits
1: the agent reports LEASE_FAILED with the end of this output.

    python3 -m faas_runtime.memory_lease --size BYTES --run-dir DIR --hot-host HOST \\
        --control ipc://.../control.sock

Owns: one memory lease's server process. May not touch: the agent's state; the memory
and RMA mechanics (faas_runtime.remote_memory).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Optional

import zmq

from . import protocol as P
from .fabric import FabricConfig
from .remote_memory import MemoryServer

log = logging.getLogger("faas.memory_lease")

POLL_MS = 50  # how soon a SIGTERM (the revoke) is acted on


class MemoryLeaseProcess:
    def __init__(self, size: int, hot_host: str, control: str):
        self.size = size
        self.stopping = False
        self.server: Optional[MemoryServer] = None
        self.ctx = zmq.Context(io_threads=1)
        self.router = P.configure(self.ctx.socket(zmq.ROUTER))  # the memory server's control socket
        self.router.bind(f"tcp://{hot_host}:0")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control = P.configure(self.ctx.socket(zmq.DEALER))
        self.control.connect(control)
        self.control.send(P.encode(P.OK, rid=P.READY_RID, endpoint=self.endpoint))

    def on_sigterm(self, _signum, _frame) -> None:
        self.stopping = True

    def serve(self) -> int:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        code, serving = 0, False
        try:
            while not self.stopping:
                try:
                    ready = dict(poller.poll(POLL_MS))
                except zmq.ZMQError:
                    continue  # EINTR from a signal
                if self.control in ready:
                    code = self._drain_control()
                    if self.server is not None and not serving:
                        poller.register(self.router, zmq.POLLIN)  # served from the grant on
                        serving = True
                if self.router in ready and self.server is not None and not self.stopping:
                    self.server.handle(0)  # FABRIC_ATTACH and PING (and MEM_REVOKE) from the lease holder
        finally:
            self.close()
        return code

    def _drain_control(self) -> int:
        while not self.stopping:
            try:
                msg = P.decode(self.control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return 0
            except P.ProtocolError as exc:
                log.warning("bad message from the agent: %s", exc)
                continue
            if msg["type"] == P.GRANT and self.server is None:
                try:
                    self._grant(msg)
                except Exception as exc:  # printed: the agent's LEASE_FAILED carries it
                    print(f"cannot serve {self.size} bytes of remote memory: {type(exc).__name__}: {exc}", flush=True)
                    self.stopping = True
                    return 1
                self.control.send(P.encode(P.OK, rid=msg.get("rid"),
                                           rma={"control": self.endpoint, "provider": self.server.ep.provider}))
            elif msg["type"] == P.LEASE_END:
                log.info("lease ended: %s", msg.get("reason"))
                self.stopping = True
                self.control.send(P.encode(P.OK, rid=msg.get("rid")))
            else:
                self.control.send(P.encode(P.ERROR, rid=msg.get("rid"), code=P.E_UNKNOWN_TYPE,
                                           message=f"a memory server does not take {msg['type']!r}"))
        return 0

    def _grant(self, msg: dict) -> None:
        fabric = msg.get("fabric")
        if not isinstance(fabric, dict) or not isinstance(fabric.get("provider"), str):
            raise ValueError("the grant names no libfabric provider (remote memory needs RMA)")
        cpus = msg.get("cpus")
        if cpus:
            os.sched_setaffinity(0, cpus)  # before the progress thread starts: it inherits this
        config = FabricConfig(fabric["provider"], str(fabric.get("domain") or ""), bool(fabric.get("no_cqdata")))
        self.server = MemoryServer(self.size, config=config, token=str(msg["token"]), sock=self.router,
                                   ctx=self.ctx)
        log.info("serving %d bytes on %s (%s), CPUs %s", self.size, self.endpoint, self.server.ep.describe(),
                 sorted(os.sched_getaffinity(0)))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # revoke first: epoch 0, then the registration, then the pages
            self.server = None
        else:
            self.router.close(0)
        self.control.close(0)
        self.ctx.term()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-memory-lease")
    ap.add_argument("--size", type=int, required=True, help="bytes to serve")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--hot-host", default="127.0.0.1", help="address the lease holder reaches this node at")
    ap.add_argument("--control", required=True, help="the agent's control socket (ipc://...) to connect to")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    proc = MemoryLeaseProcess(args.size, args.hot_host, args.control)
    signal.signal(signal.SIGTERM, proc.on_sigterm)
    signal.signal(signal.SIGINT, proc.on_sigterm)
    return proc.serve()


if __name__ == "__main__":
    sys.exit(main())
