"""This node's own addresses, derived rather than assumed to be 127.0.0.1.

A node that serves hot clients (executors' ZeroMQ sockets, libfabric RMA endpoints) must
advertise an address other hosts reach. The one this node uses towards the co-scheduler is
that address on every cluster we know of (the head and the clients are on the cluster
network), so the agent derives its default from the co-scheduler's endpoint, and the RMA
interface from that address. A site with another layout sets ``--hot-host`` and
``FAAS_FABRIC_DOMAIN`` (docs/runtime.md, docs/fabric.md).
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import socket
import struct
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .fabric import FabricConfig

log = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's IPv4 address


class AddressError(ValueError):
    """An endpoint this node cannot derive its own address from."""


def _tcp_host_port(endpoint: str) -> Optional[tuple[str, int]]:
    """(host, port) of ``tcp://host:port``; None for a local transport (ipc://, inproc://)."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme in ("ipc", "inproc"):
        return None
    if parts.scheme != "tcp" or not parts.hostname or parts.hostname == "*":
        raise AddressError(f"not a tcp://HOST:PORT endpoint to derive this node's address from: {endpoint!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise AddressError(f"bad port in {endpoint!r}: {exc}") from None
    if port is None:
        raise AddressError(f"no port in {endpoint!r}")
    return parts.hostname, port


def address_towards(endpoint: str) -> str:
    """The local IPv4 address this host sends from to reach ``endpoint`` (several,
    comma-separated: the first tcp one). A connected UDP socket asks the kernel's routing
    table without sending anything. A local transport gives 127.0.0.1."""
    targets = [e for e in endpoint.split(",") if e.strip()]
    if not targets:
        raise AddressError("no endpoint to derive this node's address from")
    for target in targets:
        host_port = _tcp_host_port(target)
        if host_port is None:
            continue
        try:
            infos = socket.getaddrinfo(host_port[0], host_port[1], socket.AF_INET, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise AddressError(f"cannot resolve {host_port[0]!r} (from {target!r}): {exc}") from None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(infos[0][4])
            except OSError as exc:
                raise AddressError(f"no route from this host to {target!r}: {exc}") from None
            return probe.getsockname()[0]
    return "127.0.0.1"


def interface_of(address: str) -> Optional[str]:
    """The name of the network interface holding IPv4 ``address`` here (``lo`` for
    127.0.0.1), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


# Providers over the kernel's IP stack: their domain is a network interface's name.
IP_PROVIDERS = ("tcp", "udp", "sockets")


def agent_addresses(endpoint: str, hot_host: Optional[str], fabric: "FabricConfig") -> tuple[str, "FabricConfig"]:
    """The agent's hot-path address and fabric: ``hot_host`` if given, else this node's
    address towards the co-scheduler; ``FAAS_FABRIC_DOMAIN`` if set, else (IP providers)
    the interface holding that address, so an RMA endpoint listens where hot clients reach
    this node, never on an interface a client named for its own host."""
    host = hot_host or address_towards(endpoint)
    base = fabric.provider.split(";")[0].strip().lower()
    if fabric.enabled and not fabric.domain and base in IP_PROVIDERS:
        fabric = dataclasses.replace(fabric, domain=interface_of(host) or "")
    log.info("hot clients reach this node at %s (RMA %s, interface %s)", host, fabric.provider,
             fabric.domain or "the provider's first")
    return host, fabric
