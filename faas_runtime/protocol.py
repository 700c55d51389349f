"""The slurm-faas wire protocol: message types, the version, and framing. One place.

Transport: ZeroMQ. The co-scheduler binds one ROUTER; agents and clients connect
DEALER sockets. Each message is one msgpack frame holding a map with at least
``v`` (protocol version) and ``type``; requests that want a reply carry ``rid``
and the reply echoes it.

Agent -> co-scheduler: HELLO (node, version check), LEND (a slot from a lend record),
REVOKE, HEARTBEAT (running invocation ids), STARTED, RESULT, EVICTED.
Co-scheduler -> agent: WELCOME, RUN, CANCEL, REVOKE (a lend Slurm says is over), ERROR (e.g. ``unknown-agent``: say HELLO again).
Client -> co-scheduler: REGISTER, INVOKE, STATUS, RESULT_GET, SLOTS, PING, AGENTS; reply OK or ERROR.

Clients prove who they are with a munge credential whose payload is the SHA-256 of the
request body (see ``coscheduler.auth``); agents are trusted by network placement in this
version (CurveZMQ is the planned upgrade).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import msgpack
import zmq

VERSION = 1

# agent -> co-scheduler
HELLO = "hello"
LEND = "lend"
REVOKE = "revoke"
HEARTBEAT = "heartbeat"
STARTED = "started"
RESULT = "result"
EVICTED = "evicted"
# co-scheduler -> agent
WELCOME = "welcome"
RUN = "run"
CANCEL = "cancel"
# client -> co-scheduler
REGISTER = "register"
INVOKE = "invoke"
STATUS = "status"
RESULT_GET = "result-get"
SLOTS = "slots"
AGENTS = "agents"
PING = "ping"
# replies
OK = "ok"
ERROR = "error"

AGENT_TYPES = frozenset({HELLO, LEND, REVOKE, HEARTBEAT, STARTED, RESULT, EVICTED})
CLIENT_TYPES = frozenset({REGISTER, INVOKE, STATUS, RESULT_GET, SLOTS, AGENTS, PING})

# Error codes carried in ERROR replies: clients branch on these, people read ``message``.
E_MALFORMED = "malformed"
E_VERSION = "version-mismatch"
E_UNKNOWN_TYPE = "unknown-type"
E_UNKNOWN_AGENT = "unknown-agent"
E_AUTH = "auth"
E_NOT_FOUND = "not-found"
E_INVALID = "invalid"
E_NOT_READY = "not-ready"
E_INTERNAL = "internal"

HEARTBEAT_INTERVAL_S = 1.0
AGENT_DEAD_AFTER_S = 5.0
HIGH_WATER_MARK = 10_000


class ProtocolError(Exception):
    """A frame that is not a valid message of this protocol."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def encode(msg_type: str, **fields: Any) -> bytes:
    return msgpack.packb({"v": VERSION, "type": msg_type, **fields}, use_bin_type=True)


def decode(frame: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_MALFORMED, f"not a msgpack frame: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(E_MALFORMED, "a message is a map with a string 'type'")
    if msg.get("v") != VERSION:
        raise ProtocolError(E_VERSION, f"protocol version {msg.get('v')!r}, this side speaks {VERSION}")
    return msg


def body_digest(msg: dict[str, Any]) -> str:
    """SHA-256 of a request without its credential: what a munge credential vouches for."""
    body = {k: v for k, v in msg.items() if k != "cred"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def configure(sock: zmq.Socket) -> zmq.Socket:
    """Every socket: no linger at close, bounded queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    return sock
