"""The co-scheduler answers bad and untrusted requests with typed errors and carries on."""
import msgpack
import pytest
import zmq

from faas_runtime.auth import make_credential
from faas_runtime import protocol as P


@pytest.fixture
def raw(cluster):
    ctx = zmq.Context.instance()
    sock = P.configure(ctx.socket(zmq.DEALER))
    sock.connect(cluster.coscheduler_endpoint)
    yield sock
    sock.close()


def _ask(sock, frame: bytes) -> dict:
    sock.send(frame)
    assert sock.poll(10_000), "no reply"
    return P.decode(sock.recv())


@pytest.mark.parametrize("frame,code", [
    (b"\x00not msgpack\xc1", P.E_MALFORMED),
    (msgpack.packb({"v": P.VERSION + 1, "type": "ping"}), P.E_VERSION),
    (msgpack.packb({"v": P.VERSION, "type": "launch-missiles"}), P.E_UNKNOWN_TYPE),
    (msgpack.packb({"v": P.VERSION, "type": "invoke", "function": "x"}), P.E_AUTH),
    (msgpack.packb({"v": P.VERSION, "type": "invoke", "function": "x", "cred": "MUNGE:forged:"}), P.E_AUTH),
])
def test_bad_requests_get_typed_errors(raw, frame, code):
    reply = _ask(raw, frame)
    assert reply["type"] == P.ERROR and reply["code"] == code
    assert _ask(raw, P.encode(P.PING))["type"] == P.OK  # still serving


def test_credential_bound_to_its_request_and_not_replayable(cluster, raw):
    msg = {"v": P.VERSION, "type": P.SLOTS, "rid": "r1"}
    cred = make_credential(P.body_digest(msg), str(cluster.munge_socket))
    assert _ask(raw, msgpack.packb({**msg, "cred": cred}))["type"] == P.OK
    replay = _ask(raw, msgpack.packb({**msg, "cred": cred}))
    assert replay["type"] == P.ERROR and replay["code"] == P.E_AUTH and "Replayed" in replay["message"]
    other = {"v": P.VERSION, "type": P.STATUS, "rid": "r2", "invocation_id": 1}
    cred2 = make_credential(P.body_digest(msg | {"rid": "r3"}), str(cluster.munge_socket))
    mismatch = _ask(raw, msgpack.packb({**other, "cred": cred2}))
    assert mismatch["code"] == P.E_AUTH and "does not match" in mismatch["message"]
