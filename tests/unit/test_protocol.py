import msgpack
import pytest

from faas_runtime import protocol as P


def test_round_trip():
    assert P.decode(P.encode(P.PING, rid="1")) == {"v": P.VERSION, "type": "ping", "rid": "1"}


@pytest.mark.parametrize("frame,code", [
    (b"\xc1garbage", P.E_MALFORMED),
    (msgpack.packb([1, 2]), P.E_MALFORMED),
    (msgpack.packb({"v": P.VERSION}), P.E_MALFORMED),
    (msgpack.packb({"v": 99, "type": "ping"}), P.E_VERSION),
])
def test_bad_frames_are_typed_errors(frame, code):
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frame)
    assert info.value.code == code


def test_body_digest_ignores_key_order_and_credential():
    a = {"v": 1, "type": "invoke", "rid": "x", "function": "f", "payload_json": "1"}
    b = dict(reversed(list(a.items())), cred="anything")
    assert P.body_digest(a) == P.body_digest(b)
    assert P.body_digest(a) != P.body_digest({**a, "payload_json": "2"})
