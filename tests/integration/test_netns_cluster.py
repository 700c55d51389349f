"""Many hosts for real: the dev cluster with each node (slurmd, agent, executors, its batch
jobs) in a network namespace of its own at its own address (``dev-cluster up --netns``,
coscheduler.tools.devcluster_netns), so nothing can rely on sharing 127.0.0.1.

The backfill, eviction and hot-lease tests run again here, unchanged, against that
cluster (``cluster`` below is the ``netns_cluster`` for every fixture of this module), and
more: the layout itself, hot calls over libfabric RMA (tcp) from the head to a node, and
the clean removal of a crashed cluster's namespaces.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from coscheduler.tools import devcluster_netns
from coscheduler.tools.devcluster import DevCluster
from faas_runtime import fabric
from faas_runtime.addresses import address_towards, interface_of
from tests.conftest import missing

from .helpers import active_slot, lease_for, register_runtime_probes, run, sbatch
# The same tests as on the one-address cluster (collected again in this module).
from .test_backfill import (  # noqa: F401
    test_eviction_requeues_running_work,
    test_function_errors_are_reported,
    test_scancel_revokes_and_new_work_waits_for_another_lend,
    test_short_invocations_are_dispatched_ahead_and_a_scancel_requeues_what_waits,
    test_slurm_reconciliation_revokes_when_the_plugin_revoke_never_arrives,
    test_twenty_invocations_run_on_the_lent_cpus,
)
from .test_hot_lease import (  # noqa: F401
    hot_functions,
    test_a_lease_holds_its_cores_and_ends_with_a_typed_error_on_revoke,
    test_hot_calls_sync_async_timeouts_and_errors,
)


@pytest.fixture(scope="session")
def cluster(netns_cluster):
    return netns_cluster


def _net_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _in_node(cluster, node: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cluster.network.enter(node), *argv], capture_output=True, text=True, timeout=30)


def test_every_node_is_a_host_of_its_own(cluster):
    network = cluster.network
    assert network is not None
    head_ns = _net_ns(os.getpid())
    status = cluster.status()
    assert _net_ns(status["slurmctld"]) == _net_ns(status["faas-coscheduler"]) == head_ns
    seen = set()
    for node in network.nodes:
        ns = _net_ns(status[f"slurmd-{node}"])
        assert ns == _net_ns(status[f"faas-agent-{node}"]) and ns != head_ns and ns not in seen
        seen.add(ns)
    # Slurm reaches each slurmd at its own address; clients and agents reach the head at its own.
    addrs = dict(line.split() for line in run(cluster, "sinfo", "-h", "-N", "-o", "%N %o").stdout.splitlines())
    assert addrs == {n: network.address(n) for n in network.nodes}
    assert len(set(addrs.values())) == len(network.nodes)
    assert cluster.coscheduler_endpoint.startswith(f"tcp://{network.head_address}:")
    port = cluster.ports()["coscheduler"]
    # A node's 127.0.0.1 is its own: the co-scheduler is not there, and no route leaves the subnet.
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)"
    assert _in_node(cluster, "n1", "python3", "-c", probe, "127.0.0.1", str(port)).returncode != 0
    assert _in_node(cluster, "n1", "python3", "-c", probe, network.head_address, str(port)).returncode == 0
    routes = _in_node(cluster, "n1", "ip", "-4", "route").stdout
    assert "default" not in routes and network.subnet in routes


def test_hot_calls_over_rma_tcp_from_the_head_to_a_node(cluster, client, jobs):
    if not fabric.available():
        missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")
    register_runtime_probes(client, "net")
    jobs.append(sbatch(cluster, "-N1", "-c8", "--faas-share=cores=2", "--wrap", "sleep 120"))
    active_slot(client, jobs[-1])
    # The client's RMA interface: the one it reaches the head on (the bridge), derived as the agents do.
    head_interface = interface_of(address_towards(cluster.coscheduler_endpoint))
    assert head_interface == cluster.network.bridge
    with lease_for(cluster, "net-who", fabric=fabric.FabricConfig("tcp", head_interface)) as who:
        node = who.slot_id.split("@")[1]
        address = cluster.network.address(node)
        assert who.endpoint.startswith(f"tcp://{address}:")
        assert who.rma and str(who.rma["control"]).startswith(f"tcp://{address}:")
        assert who.transport == "rma", who.rma_error
        v = who.call("hi")
        assert v["echo"] == "hi"
        # the executor runs in its node's namespace, not the head's
        assert _net_ns(v["pid"]) == _net_ns(cluster.status()[f"faas-agent-{node}"]) != _net_ns(os.getpid())
    with lease_for(cluster, "net-echo", fabric=fabric.FabricConfig("tcp", head_interface)) as echo:
        assert echo.transport == "rma", echo.rma_error
        big = "x" * (1 << 20)  # above the RMA slot: the executor reads it, the client reads the result
        assert echo.call(big) == big
        assert [p.result(timeout_s=30) for p in [echo.submit(n) for n in range(20)]] == list(range(20))


def test_down_removes_what_a_crashed_cluster_left_and_the_names_are_free_again():
    usable, why = devcluster_netns.available()
    if os.geteuid() != 0 or not usable:
        missing(f"network namespaces need root and iproute2: {why}")
    root = Path(tempfile.mkdtemp(prefix="faas-netns-leftovers-"))
    try:
        network = devcluster_netns.NodeNetwork.plan(root, ("n1", "n2"))
        network.create()  # as a cluster that crashed would leave them
        assert network.exists()
        with pytest.raises(devcluster_netns.NetnsError, match="exists"):
            network.create()  # a fresh `up` must clear them first, and does (next lines)
        devcluster_netns.remove_leftovers(network.tag)
        network.create()
        DevCluster(root).down(timeout_s=5)  # no cluster.json, no daemons: still removes them
        assert not network.exists()
        assert not any(line.startswith(network.tag) for line in
                       subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines())
        assert network.tag not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    finally:
        devcluster_netns.remove_leftovers(devcluster_netns.NodeNetwork.tag_of(root))
        shutil.rmtree(root, ignore_errors=True)
