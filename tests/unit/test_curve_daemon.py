"""The co-scheduler with CurveZMQ on (FAAS_CURVE_DIR): an agent with its key registers;
a user, or an agent speaking for another node, is refused; clients still work."""
import socket
import threading

import pytest
import zmq

from coscheduler import db as D
from faas_runtime.queue_client import Client
from coscheduler.config import Config
from coscheduler.daemon import Coscheduler
from faas_runtime import curve
from faas_runtime import protocol as P


class _NoSlurm:
    def jobs(self):
        return {}

    def job(self, job_id):
        return None

    def nodes(self):
        return {}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def secured(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    curve.generate(keys, ["n1", "n2"])
    monkeypatch.setenv(curve.ENV, str(keys))
    database = D.Database(f"sqlite:///{tmp_path / 'faas.db'}")
    database.create_schema()
    config = Config(db_url=database.url, bind=f"tcp://127.0.0.1:{_port()}", reconcile_s=3600)
    # The stub credential's text is the uid it proves: "0" (root) for the agents' HELLOs.
    daemon = Coscheduler(config, database, _NoSlurm(), verify=lambda cred, digest: int(cred),
                         issue=lambda payload: "welcome")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    yield daemon, keys
    daemon.stop_requested = True
    thread.join(10)
    database.dispose()


def _agent_says_hello(endpoint, keys, key_of, node):
    ctx = zmq.Context()
    try:
        sock = P.configure(ctx.socket(zmq.DEALER))
        if key_of is not None:
            curve.setup_agent(sock, keys, key_of)
        else:
            curve.setup_client(sock, keys)
        sock.connect(endpoint)
        sock.send(P.encode(P.HELLO, node=node, held=[], nonce="n", cred="0"))
        if not sock.poll(5000):
            return None
        return P.decode(sock.recv())
    finally:
        ctx.destroy(linger=0)


def test_only_the_nodes_own_key_registers_its_agent(secured):
    daemon, keys = secured
    endpoint = daemon.config.bind
    assert _agent_says_hello(endpoint, keys, "n1", "n1")["type"] == P.WELCOME
    refused = _agent_says_hello(endpoint, keys, "n1", "n2")  # n1's key speaking for n2
    assert refused["type"] == P.ERROR and refused["code"] == P.E_AUTH
    refused = _agent_says_hello(endpoint, keys, None, "n2")  # a user's throwaway key
    assert refused["type"] == P.ERROR and refused["code"] == P.E_AUTH
    assert set(daemon.agents) == {"n1"}
    with Client(endpoint, timeout_s=5) as c:  # users connect with the public key (from FAAS_CURVE_DIR)
        assert c.ping()["pong"] is True
    ctx = zmq.Context()  # and without Curve nothing gets through at all
    try:
        plain = P.configure(ctx.socket(zmq.DEALER))
        plain.connect(endpoint)
        plain.send(P.encode(P.PING, rid="x"))
        assert not plain.poll(1500)
    finally:
        ctx.destroy(linger=0)
