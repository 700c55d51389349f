"""CurveZMQ: keys from `faas-admin keygen`, agents named by their key, intruders refused."""
import stat

import pytest
import zmq
from click.testing import CliRunner

from coscheduler.cli.admin import main as admin
from faas_runtime import curve
from faas_runtime import protocol as P


@pytest.fixture
def keys(tmp_path):
    out = CliRunner().invoke(admin, ["keygen", str(tmp_path / "k"), "--agent", "n1", "--agent", "n2"])
    assert out.exit_code == 0, out.output
    return tmp_path / "k"


def test_keygen_writes_private_secrets_and_never_replaces_silently(keys):
    for f in ("coscheduler.key_secret", "agents/n1.key_secret", "agents/n2.key_secret"):
        assert stat.S_IMODE((keys / f).stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "coscheduler.key").stat().st_mode) == 0o644
    before = (keys / "coscheduler.key_secret").read_bytes()
    out = CliRunner().invoke(admin, ["keygen", str(keys)])
    assert "nothing written" in out.output and (keys / "coscheduler.key_secret").read_bytes() == before


def _exchange(ctx, server_sock, client_sock):
    client_sock.send(P.encode(P.PING))
    if not server_sock.poll(3000):
        return None
    parts = server_sock.recv_multipart(copy=False)
    return parts


def test_agents_are_named_by_key_and_others_are_clients(keys):
    ctx = zmq.Context()
    router = P.configure(ctx.socket(zmq.ROUTER))
    server = curve.CurveServer(ctx, router, keys)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        agent = P.configure(ctx.socket(zmq.DEALER))
        curve.setup_agent(agent, keys, "n1")
        agent.connect(f"tcp://127.0.0.1:{port}")
        parts = _exchange(ctx, router, agent)
        assert parts and server.check_agent(parts[-1], "n1") is None
        assert "need that agent's" in server.check_agent(parts[-1], "n2")  # n1 cannot speak for n2

        user = P.configure(ctx.socket(zmq.DEALER))
        assert curve.setup_client(user, keys)
        user.connect(f"tcp://127.0.0.1:{port}")
        parts = _exchange(ctx, router, user)
        assert parts and curve.CurveServer.peer(parts[-1]) == "client"
        assert "this connection is client" in server.check_agent(parts[-1], "n1")

        plain = P.configure(ctx.socket(zmq.DEALER))  # no Curve at all: never gets through
        plain.connect(f"tcp://127.0.0.1:{port}")
        assert _exchange(ctx, router, plain) is None
    finally:
        server.stop()
        ctx.destroy(linger=0)


def test_missing_keys_are_a_clear_error(tmp_path):
    ctx = zmq.Context()
    try:
        with pytest.raises(curve.CurveError, match="cannot read CurveZMQ key"):
            curve.setup_agent(ctx.socket(zmq.DEALER), tmp_path, "n1")
    finally:
        ctx.destroy(linger=0)
