"""A node's own addresses, derived (faas_runtime.addresses), and the netns dev cluster's
names and addresses (coscheduler.tools.devcluster_netns); nothing is created here."""
import json

import pytest

from coscheduler.tools.devcluster import DevCluster
from coscheduler.tools.devcluster_netns import NodeNetwork
from faas_runtime.addresses import AddressError, address_towards, agent_addresses, interface_of
from faas_runtime.fabric import FabricConfig


def test_the_address_towards_the_coscheduler_is_the_one_the_route_gives():
    assert address_towards("tcp://127.0.0.1:7800") == "127.0.0.1"
    assert address_towards("tcp://127.0.0.9:7800") == "127.0.0.1"  # the whole of 127/8 is lo's
    assert address_towards("ipc:///run/faas.sock") == "127.0.0.1"  # a local co-scheduler
    # several endpoints (an active and a standby): the first tcp one decides
    assert address_towards("ipc:///x, tcp://127.0.0.1:1") == "127.0.0.1"


@pytest.mark.parametrize("bad, why", [("tcp://*:7800", "not a tcp://HOST:PORT"), ("http://h:1", "not a tcp"),
                                      ("tcp://h", "no port"), ("tcp://h:x", "bad port"), ("", "no endpoint"),
                                      ("tcp://no-such-host.invalid:1", "cannot resolve")])
def test_an_endpoint_without_a_host_to_route_to_is_a_typed_error(bad, why):
    with pytest.raises(AddressError, match=why):
        address_towards(bad)


def test_the_interface_of_an_address():
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("203.0.113.77") is None  # TEST-NET-3: on no interface here


def test_the_agent_listens_where_it_reaches_the_coscheduler_unless_told():
    host, fab = agent_addresses("tcp://127.0.0.1:7800", None, FabricConfig("tcp"))
    assert (host, fab.domain) == ("127.0.0.1", "lo")  # RMA on the same interface as the hot path
    host, fab = agent_addresses("tcp://127.0.0.1:7800", "10.0.0.5", FabricConfig("tcp", "ib0"))
    assert (host, fab.domain) == ("10.0.0.5", "ib0")  # an explicit --hot-host and FAAS_FABRIC_DOMAIN win
    # domains of other providers are not interface names: left to the provider
    assert agent_addresses("tcp://127.0.0.1:7800", None, FabricConfig("shm"))[1].domain == ""
    assert agent_addresses("tcp://127.0.0.1:7800", None, FabricConfig("verbs;ofi_rxm"))[1].domain == ""
    assert agent_addresses("tcp://127.0.0.1:7800", None, FabricConfig("off"))[1].domain == ""


def test_a_netns_plan_has_names_of_its_directory_and_one_address_per_host(tmp_path):
    net = NodeNetwork(NodeNetwork.tag_of(tmp_path), "10.231.7.0/24", ("n1", "n2", "n3"))
    assert net.tag.startswith("faas") and len(net.tag) == 10 and net.tag == NodeNetwork.tag_of(tmp_path)
    assert NodeNetwork.tag_of(tmp_path / "other") != net.tag
    assert net.head_address == "10.231.7.1"
    assert [net.address(n) for n in net.nodes] == ["10.231.7.11", "10.231.7.12", "10.231.7.13"]
    assert all(len(net._veth(n)) <= 15 for n in net.nodes)  # IFNAMSIZ
    assert net.enter("n2") == ["nsenter", f"--net=/run/netns/{net.tag}-n2", "--"]
    assert NodeNetwork.from_state(json.loads(json.dumps(net.state()))) == net


def test_a_netns_cluster_puts_its_head_and_nodes_at_their_addresses(tmp_path):
    plain = DevCluster(tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"ports": {"coscheduler": 7801}, "nodes": ["n1"]}))
    assert plain.network is None and plain.coscheduler_endpoint == "tcp://127.0.0.1:7801"
    assert plain.node_address("n1") == "127.0.0.1" and plain._in_node("n1") == []
    net = NodeNetwork("faas000000", "10.231.9.0/24", ("n1",))
    (tmp_path / "cluster.json").write_text(json.dumps({"ports": {"coscheduler": 7801}, "nodes": ["n1"],
                                                       "netns": net.state()}))
    # any DevCluster of the directory (`up` without --netns too) keeps the layout it was started with
    c = DevCluster(tmp_path)
    assert c.coscheduler_endpoint == "tcp://10.231.9.1:7801"
    assert c.node_address("n1") == "10.231.9.11" and c._in_node("n1") == net.enter("n1")


def test_a_hot_clients_rma_interface_follows_its_route_to_the_executor():
    from faas_runtime.client import route_fabric
    from faas_runtime.fabric import FabricConfig

    assert route_fabric(FabricConfig("tcp"), "tcp://127.0.0.1:5555").domain == "lo"
    assert route_fabric(FabricConfig("tcp", "eth9"), "tcp://127.0.0.1:5555").domain == "eth9"  # configured wins
    assert route_fabric(FabricConfig("shm"), "tcp://127.0.0.1:5555").domain == ""  # not an IP provider
