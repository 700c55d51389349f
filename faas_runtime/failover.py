"""Following the active co-scheduler among several addresses (high availability).

A site may run two co-schedulers on one PostgreSQL database: one active, the others
standing by (coscheduler/leader.py). Agents and clients are given every address
(``tcp://head1:7800,tcp://head2:7800``) and talk to one at a time through a ``Link``: a
DEALER socket connected to the current address. They move to the next address when

- the connection breaks or cannot be made (a ZeroMQ socket monitor; with ZMTP heartbeats
  a peer whose host is gone is noticed within ``HEARTBEAT_TIMEOUT_MS``, not after TCP's
  minutes), or
- the co-scheduler there answers ``standby`` (protocol.E_STANDBY), or
- (the caller's choice) it does not answer in time.

With one address a Link is a plain DEALER: no monitor, no heartbeats, never a switch
(ZeroMQ reconnects to the same address by itself, as before).

Owns: the list of addresses and the socket towards the current one. May not touch: what is
sent over it (the agent and the clients own their protocols).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional, Union

import zmq

from . import protocol as P

log = logging.getLogger("faas.agent")

HEARTBEAT_IVL_MS = 1000  # ZMTP PING every second on an idle connection...
HEARTBEAT_TIMEOUT_MS = 3000  # ... and a peer that answers nothing for 3 s is gone
CONNECT_TIMEOUT_MS = 2000  # a host that does not answer a TCP connect (not a refusal)
RECONNECT_IVL_MS = 200
MIN_DWELL_S = 0.3  # at least this long on an address before the next: a pass over dead ones is not a busy loop
_BROKEN = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class BadAddress(ValueError):
    """A co-scheduler address list that cannot be used; the message says which entry."""


def addresses(spec: Union[str, Iterable[str]]) -> list[str]:
    """``"tcp://a:7800,tcp://b:7800"``, or a list of such strings -> the addresses, in order."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise BadAddress(f"a co-scheduler address is a string, not {part!r}")
        for address in (a.strip() for a in part.split(",")):
            if not address:
                continue
            if "://" not in address:
                raise BadAddress(f"co-scheduler address {address!r} is not a ZeroMQ address such as tcp://head:7800")
            if address not in out:
                out.append(address)
    if not out:
        raise BadAddress("no co-scheduler address given (e.g. tcp://head:7800, or several separated by commas)")
    return out


class Link:
    """A DEALER connected to one co-scheduler address at a time (see the module's text)."""

    def __init__(self, ctx: zmq.Context, spec: Union[str, Iterable[str]],
                 setup: Optional[Callable[[zmq.Socket], object]] = None):
        """``setup(sock)`` prepares each new socket before it connects (CurveZMQ keys)."""
        self.addresses = addresses(spec)
        self.ctx, self.setup = ctx, setup
        self.index = 0
        self.switches = 0  # how often the link moved on (subscriptions made before are gone)
        self.broken = False  # the current address is not the active co-scheduler (or unreachable)
        self.sock: zmq.Socket
        self.monitor: Optional[zmq.Socket] = None
        self.opened = 0.0  # monotonic
        self._open()

    @property
    def address(self) -> str:
        return self.addresses[self.index]

    @property
    def several(self) -> bool:
        return len(self.addresses) > 1

    def _open(self) -> None:
        sock = P.configure(self.ctx.socket(zmq.DEALER))
        if self.setup is not None:
            self.setup(sock)
        if self.several:
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            self.monitor = sock.get_monitor_socket(_BROKEN)
        sock.connect(self.address)
        self.sock, self.broken, self.opened = sock, False, time.monotonic()

    def check(self) -> bool:
        """Whether the current address should be left: drains the monitor's events."""
        # imported here: zmq.utils.monitor loads zmq.asyncio (asyncio, ssl: 40 ms of every
        # CLI start), and only a link with several addresses has a monitor
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] & _BROKEN:
                self.broken = True
        return self.broken and self.several

    def may_switch(self) -> bool:
        return time.monotonic() - self.opened >= MIN_DWELL_S

    def next(self) -> None:
        """Close the socket (what it held is dropped) and connect to the next address."""
        self._close()
        self.index = (self.index + 1) % len(self.addresses)
        self.switches += 1
        self._open()

    def _close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.sock.close(linger=0)

    def close(self) -> None:
        self._close()


WELCOME_WAIT_S = 5.0  # an agent not welcomed this long on an address tries the next


class AgentFailover:
    """The agent's side (mixed into faas_runtime.agent.Agent, which has ``ctx``, ``poller``,
    ``endpoint``, ``curve_dir``, ``node``, ``welcomed``): one Link to the co-schedulers, and
    ``step_link`` each loop turn, which moves to the next address when this one broke,
    answered ``standby``, or never welcomed us; the agent then says HELLO there (listing
    what it holds, so the new co-scheduler adopts it) and resends its unacknowledged
    reports after the WELCOME. Work in flight is not touched."""

    def _open_link(self) -> None:
        from . import curve

        setup = (lambda s: curve.setup_agent(s, self.curve_dir, self.node)) if self.curve_dir is not None else None
        self.link = Link(self.ctx, self.endpoint, setup=setup)
        self._watch_link()

    def _watch_link(self) -> None:
        self.sock = self.link.sock
        self.poller.register(self.sock, zmq.POLLIN)
        if self.link.monitor is not None:
            self.poller.register(self.link.monitor, zmq.POLLIN)

    def step_link(self) -> None:
        link = self.link
        if not link.several:
            return
        stuck = not self.welcomed and time.monotonic() - link.opened > WELCOME_WAIT_S
        if not (link.check() or stuck) or not link.may_switch():
            return
        self.poller.unregister(self.sock)
        if link.monitor is not None:
            self.poller.unregister(link.monitor)
        old, was_welcomed = link.address, self.welcomed
        link.next()
        self._watch_link()
        self.welcomed, self._session_key, self._last_hello = False, None, -1e9
        # INFO when the active one is lost; the search for the next one is DEBUG (one line per try).
        log.log(logging.INFO if was_welcomed else logging.DEBUG, "co-scheduler at %s %s; trying %s", old,
                "does not answer" if stuck else "is gone or a standby", link.address)
        self._hello()

    def standby_answered(self) -> None:
        """The co-scheduler at the current address is a standby: ``step_link`` moves on."""
        self.link.broken = True


def joined(_ctx: object, _param: object, value: Iterable[str]) -> str:
    """A click callback: a repeated address option (each maybe a comma list) as one comma list."""
    import click

    try:
        return ",".join(addresses([value] if isinstance(value, str) else list(value)))
    except BadAddress as exc:
        raise click.BadParameter(str(exc)) from None
