"""The dev cluster's nodes as separate hosts: one network namespace per node.

``dev-cluster up --netns`` puts each node's slurmd, agent and executors (and so its batch
jobs) in a network namespace of its own, joined by a veth pair to a bridge in the head
namespace (where munged, slurmctld, slurmdbd and the co-scheduler stay)::

    head (root namespace)  bridge faas<h>  10.231.N.1/24
    node n1                netns faas<h>-n1, eth0 10.231.N.11/24 (lo: 127.0.0.1 of its own)
    node n2 ...            10.231.N.12, n3 10.231.N.13

No route leaves the subnet (no default route in a node, no forwarding): traffic flows only
between the nodes and the head. ``<h>`` derives from the cluster directory, so a crashed
cluster's leftovers are found again (and removed) by the next ``up`` or ``down`` of the
same directory, and two clusters never share names. ``N`` is a /24 no interface here uses.

Processes enter a node with ``nsenter --net=``, not ``ip netns exec``: the latter also makes
a mount namespace and remounts /sys, which would hide the cgroup tree the agents and
Slurm's task/cgroup share with the head. Everything else (files, munged's socket, the spool,
cgroups, pids) stays shared: this proves the network, not separate kernels.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .devcluster_procs import ClusterError

SUBNETS = ipaddress.ip_network("10.231.0.0/16")  # private, and only ever inside this machine
NODE_HOST_BASE = 10  # node i (from 1) gets .(10 + i); the head has .1
NODE_INTERFACE = "eth0"  # a node's side of its veth pair, as on a real host
NETNS_DIR = Path("/run/netns")


class NetnsError(ClusterError):
    """The node namespaces could not be made or removed; the message has the ``ip`` error."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return out


def available() -> tuple[bool, str]:
    """(True, "") when this host can make network namespaces, else (False, why)."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return False, "iproute2 (ip) and util-linux (nsenter) are needed (make deps)"
    probe = _ip("netns", "list", check=False)
    if probe.returncode != 0:
        return False, f"`ip netns list` failed: {probe.stderr.strip()}"
    return True, ""


@dataclass(frozen=True)
class NodeNetwork:
    """Names and addresses of one cluster's namespaces (kept in cluster.json as ``netns``)."""

    tag: str  # "faas" + 6 hex digits of the cluster directory: every name starts with it
    subnet: str  # e.g. "10.231.7.0/24"
    nodes: tuple[str, ...]

    @staticmethod
    def tag_of(root: Path) -> str:
        """The prefix of every name the cluster in ``root`` gives a namespace or link."""
        return "faas" + hashlib.sha1(str(root).encode()).hexdigest()[:6]

    @classmethod
    def plan(cls, root: Path, nodes: tuple[str, ...]) -> "NodeNetwork":
        """A fresh plan for the cluster in ``root``: its names, and a /24 in 10.231/16 that no
        interface of the head namespace has an address in (call after its leftovers are removed)."""
        tag = cls.tag_of(root)
        used = {ipaddress.ip_interface(a["local"] + "/" + str(a["prefixlen"])).network
                for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
                for a in link.get("addr_info", [])}
        subnets = list(SUBNETS.subnets(new_prefix=24))
        start = int(tag[4:], 16) % len(subnets)
        for k in range(len(subnets)):
            net = subnets[(start + k) % len(subnets)]
            if not any(net.overlaps(u) for u in used):
                return cls(tag, str(net), tuple(nodes))
        raise NetnsError(f"every /24 of {SUBNETS} is in use on this host")

    @classmethod
    def from_state(cls, state: dict) -> "NodeNetwork":
        return cls(state["tag"], state["subnet"], tuple(state["nodes"]))

    def state(self) -> dict:
        return {"tag": self.tag, "subnet": self.subnet, "nodes": list(self.nodes)}

    # -- names and addresses --------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return self.tag

    @property
    def head_address(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    def address(self, node: str) -> str:
        return str(ipaddress.ip_network(self.subnet)[NODE_HOST_BASE + 1 + self.nodes.index(node)])

    def namespace(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def _veth(self, node: str) -> str:
        return f"{self.tag}{node}"[:15]  # IFNAMSIZ

    def enter(self, node: str) -> list[str]:
        """The argv prefix that runs a program in ``node``'s network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.namespace(node)}", "--"]

    # -- making and removing --------------------------------------------------------------

    def exists(self) -> bool:
        return (_ip("link", "show", self.bridge, check=False).returncode == 0
                and all((NETNS_DIR / self.namespace(n)).exists() for n in self.nodes))

    def create(self) -> None:
        """The bridge with the head's address, one namespace per node with its address on
        eth0 (and its own loopback up); nothing else routed."""
        prefix = ipaddress.ip_network(self.subnet).prefixlen
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.head_address}/{prefix}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for node in self.nodes:
                ns, veth = self.namespace(node), self._veth(node)
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", NODE_INTERFACE, "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(node)}/{prefix}", "dev", NODE_INTERFACE)
                _ip("-n", ns, "link", "set", NODE_INTERFACE, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except NetnsError:
            remove_leftovers(self.tag)
            raise

    def remove(self) -> None:
        remove_leftovers(self.tag)


def remove_leftovers(tag: str) -> list[str]:
    """Remove every namespace and link whose name starts with ``tag`` (a node's veth goes
    with its namespace; the bridge last). Returns what was removed."""
    if shutil.which("ip") is None:
        return []
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{tag}-"):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for link in json.loads(_ip("-j", "link", "show", check=False).stdout or "[]"):
        name = link.get("ifname", "")
        if name.startswith(tag):
            _ip("link", "delete", name, check=False)
            removed.append(name)
    return removed
