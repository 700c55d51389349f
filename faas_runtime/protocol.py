"""The slurm-faas wire protocol: message types, the version, and framing. One place.

Transport: ZeroMQ. The co-scheduler binds one ROUTER; agents and clients connect
DEALER sockets. Each message is one msgpack frame holding a map with at least
``v`` (protocol version) and ``type``; requests that want a reply carry ``rid``
and the reply echoes it.

Agent -> co-scheduler: HELLO (node, what it holds, a nonce, a munge credential),
LEND (a slot from a lend record), REVOKE, HEARTBEAT (held [invocation id, attempt]),
STARTED, RESULT, EVICTED.
Co-scheduler -> agent: WELCOME (a munge credential carrying the session key), RUN, CANCEL,
REVOKE (a lend Slurm says is over), ACK (final reports it has stored), ERROR (e.g.
``unknown-agent``: say HELLO again).
Client -> co-scheduler: REGISTER, INVOKE, STATUS, RESULT_GET, SLOTS, PING, AGENTS; reply OK or ERROR.

Who may send what (docs/security.md): a client request carries a munge credential whose
payload is the SHA-256 of the request body (``faas_runtime.auth``), which proves the
user's uid. An agent's HELLO carries a munge credential of root (or the configured agent
uids) bound to the HELLO; the co-scheduler then ties that node to the ZeroMQ connection
the HELLO came on, and takes agent messages only from it, about that node only. The
WELCOME proves the co-scheduler to the agent (a munge credential of its uid, carrying the
HELLO's nonce and a fresh session key), and every later co-scheduler -> agent message
has a second frame: the HMAC-SHA256 of the first under that key (``mac`` / ``mac_ok``).
CurveZMQ (``faas_runtime.curve``) adds encryption where the network is not trusted.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
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
ACK = "ack"  # reports: [[invocation id, attempt], ...] the co-scheduler has stored
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

# Hot invocations (the rFaaS model; coscheduler.leases, faas_runtime.client):
# client -> co-scheduler: LEASE (function, duration_s) -> lease_id; LEASE_STATUS (lease_id)
#   -> state pending/ready/ended/failed, and once ready endpoint, token, cpus; LEASE_RELEASE.
# co-scheduler -> agent: LEASE_START (lease_id, token, slot, the RUN fields), LEASE_END.
# agent -> co-scheduler: LEASE_READY (lease_id, endpoint), LEASE_FAILED, LEASE_ENDED (reason).
# RMA hot path (optional fields): LEASE and LEASE_START ``fabric`` = {provider, domain} (the
# client asks); agent -> executor GRANT ``fabric`` (what to open); the executor's OK, then
# LEASE_READY and LEASE_STATUS ``rma`` = {control, provider} (where to FABRIC_ATTACH, with
# ``token``). A hot client PINGs the executor's hot socket with its token to get LEASE_ENDED.
# Memory leases (remote memory; slurm_faas.remote_memory): LEASE and LEASE_START ``kind`` =
# "memory" with ``size_bytes`` (and ``fabric``, required) instead of a function; the agent
# starts faas_runtime.memory_lease for it, whose ``rma`` control takes FABRIC_ATTACH with the token.
LEASE = "lease"
LEASE_RELEASE = "lease-release"
LEASE_STATUS = "lease-status"
LEASE_START = "lease-start"
LEASE_END = "lease-end"
LEASE_READY = "lease-ready"
LEASE_FAILED = "lease-failed"
LEASE_ENDED = "lease-ended"
LEASE_CLIENT_TYPES = frozenset({LEASE, LEASE_STATUS, LEASE_RELEASE})
LEASE_AGENT_TYPES = frozenset({LEASE_READY, LEASE_FAILED, LEASE_ENDED})
# agent or hot client -> executor: CALL (rid, payload_json, token for hot clients, cpus);
# executor -> caller: RESULT (rid, outcome, value_json / error, cpus) or ERROR; to hot
# clients LEASE_ENDED when the lease ends (revoke, expiry, release). Agent -> executor on
# its private socket: GRANT (token, cpus) and LEASE_END (token, reason).
# The agent sends queued invocations ahead (faas_runtime.invocations): CALLS (calls: [CALL
# fields]) in one frame, run in order, one RESULT each; CANCEL (rids) drops those not begun.
CALL = "call"
CALLS = "calls"
GRANT = "grant"
# libfabric RMA set-up (faas_runtime.rma, faas_runtime.remote_memory; docs/fabric.md):
# client -> RMA executor or memory server: FABRIC_ATTACH (provider, name = endpoint name,
# result = {addr, key, size}); the OK reply carries name, slot, ring (or the memory region and
# its epoch); FABRIC_DETACH (slot) frees the lease. MEM_REVOKE: release the served buffer.
FABRIC_ATTACH = "fabric-attach"
FABRIC_DETACH = "fabric-detach"
MEM_REVOKE = "mem-revoke"

# Many at once, one frame each way: RUNS (runs: [RUN fields]) from the co-scheduler, one per
# node per scheduling pass; REPORTS (reports: [{type: started|result|evicted, ...}]) from an
# agent, one per turn of its loop. Each entry is handled exactly as the single message.
RUNS = "runs"
REPORTS = "reports"
REPORT_TYPES = frozenset({STARTED, RESULT, EVICTED})
MAX_BATCH_ENTRIES = 10_000

AGENT_TYPES = frozenset({HELLO, LEND, REVOKE, HEARTBEAT, STARTED, RESULT, EVICTED, REPORTS}) | LEASE_AGENT_TYPES
# client -> co-scheduler, queue and function management (coscheduler.daemon):
# INVOKE_BATCH (function, payloads: [JSON text], priority) -> invocation_ids, all or none;
# CANCEL_INVOCATION (invocation_id) -> state; CANCEL_FUNCTION (function) -> cancelled: every
# unfinished invocation of the caller's function; LIST (state, function, ids, limit) -> invocations;
# FUNCTIONS -> functions; FUNCTION_SHOW / FUNCTION_DELETE (name, force); FUNCTION_UPDATE
# (name, function: the fields to change). REGISTER creates or replaces.
INVOKE_BATCH = "invoke-batch"
CANCEL_INVOCATION = "cancel-invocation"
CANCEL_FUNCTION = "cancel-function"
LIST = "list"
FUNCTIONS = "functions"
FUNCTION_SHOW = "function-show"
FUNCTION_UPDATE = "function-update"
FUNCTION_DELETE = "function-delete"
# RESULTS (ids, or function) -> results: [{invocation_id, state, value_json | error}] in the
# order asked; OUTPUT_GET (invocation_id) -> state, output: the end of its stdout and stderr.
RESULTS = "results"
STATS = "stats"  # root only: the loop's step durations and counters (coscheduler/metrics.py)
OVERVIEW = "overview"  # root only: agents, queue, throughput, capacity (faas-admin status)
OUTPUT_GET = "output-get"
# Binary invocations (docs/python.md): a payload or a return value may be bytes (msgpack
# bin) instead of JSON text, stored and forwarded as opaque bytes. INVOKE ``payload`` and
# INVOKE_BATCH ``payloads`` items may be bytes; RUN and CALL carry them as PAYLOAD_BIN, a
# binary RESULT as VALUE_BIN; RESULT_GET / RESULTS rows carry VALUE_BIN instead of value_json.
PAYLOAD_BIN = "payload"
VALUE_BIN = "value"
# A hot call over RMA (faas_runtime.rma) is one body: JSON text, or, starting with this byte
# (JSON text never does), bytes for the function; its result likewise (bytes the function
# returned after the same byte, else JSON text).
RMA_BINARY = b"\x00"
# An executor's (or a memory server's) first message on its control socket: OK with this
# rid and its hot ``endpoint``.
READY_RID = "ready"
# SUBSCRIBE (ids) -> subscribed, ended: the co-scheduler pushes ENDED (ended: [[id, state]])
# on this connection when any of them ends; INVOKE_BATCH ``subscribe`` = true subscribes the
# new ids. A client that reconnects collects by id (RESULTS).
SUBSCRIBE = "subscribe"
ENDED = "ended"
CLIENT_TYPES = frozenset({REGISTER, INVOKE, STATUS, RESULT_GET, SLOTS, AGENTS, PING, INVOKE_BATCH,
                          CANCEL_INVOCATION, CANCEL_FUNCTION, LIST, FUNCTIONS, FUNCTION_SHOW, FUNCTION_UPDATE,
                          FUNCTION_DELETE, RESULTS, OUTPUT_GET, STATS, OVERVIEW})

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
E_QUOTA = "quota"  # a per-user quota of the co-scheduler would be exceeded
E_EXISTS = "exists"
E_NO_CAPACITY = "no-capacity"  # no lent capacity fits a lease now
E_LEASE = "lease"  # a call without a valid lease token, or after the lease ended
E_EVICTED = "evicted"  # the executor was stopped (revoke) during the call
E_REVOKED = "revoked"  # remote memory whose lend was revoked
E_BUSY = "busy"  # the co-scheduler has too many requests waiting for their credential check
E_TOO_LARGE = "too-large"  # a request, field or batch above its documented bound
# A standby co-scheduler (high availability) answers everything with this: try the next address.
E_STANDBY = "standby"

HEARTBEAT_INTERVAL_S = 1.0  # an agent's heartbeat period unless the co-scheduler sets another
MAX_HEARTBEAT_S = 60.0  # the longest period an agent accepts (WELCOME's and ACK's heartbeat_s)


def heartbeat_period(value: Any, current: float) -> float:
    """A WELCOME's or ACK's ``heartbeat_s`` if it is one an agent accepts, else ``current``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            HEARTBEAT_INTERVAL_S <= value <= MAX_HEARTBEAT_S:
        return float(value)
    return current
HIGH_WATER_MARK = 10_000
# The largest frame any socket of ours accepts (ZMQ_MAXMSGSIZE): a peer that sends more is
# disconnected by ZeroMQ before the frame is buffered. Requests are bounded further by the
# co-scheduler's configuration (max_request_bytes, max_payload_bytes, max_batch).
MAX_FRAME_BYTES = 64 << 20
MAX_RESULT_BYTES = 8 << 20  # a function's return value (JSON text); larger is an error result
MAX_ERROR_CHARS = 16 << 10  # of an error message, and of a traceback, kept with an invocation
MAX_OUTPUT_BYTES = 64 << 10  # the end of an invocation's stdout and stderr, kept with it


def text_tail(value: Any, limit: int) -> Any:
    """A text field a function produced (its output, its traceback), bounded to its end
    (the lines nearest the failure matter most); None if it is not text or empty."""
    return value[-limit:] if isinstance(value, str) and value else None


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


def configure(sock: zmq.Socket, max_frame_bytes: int = MAX_FRAME_BYTES) -> zmq.Socket:
    """Every socket: no linger at close, bounded queues, bounded frames."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    return sock


def mac(key: bytes, frame: bytes) -> bytes:
    """The second frame of a co-scheduler -> agent message: HMAC-SHA256 under the session key."""
    return hmac.new(key, frame, hashlib.sha256).digest()


def mac_ok(key: bytes, frame: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(mac(key, frame), tag)


def answer_pending(sock: zmq.Socket, answer) -> None:
    """Answer every request waiting on a ROUTER socket, without blocking.

    ``answer(identity, msg) -> reply frame``; a malformed request gets a typed ERROR reply
    and an exception in ``answer`` an ``internal`` one, so a bad client never stops the
    server (the fabric executors' and the memory server's control channels).
    """
    while True:
        try:
            ident, frame = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        except ValueError:
            continue  # not [identity, frame]
        try:
            reply = answer(ident, decode(frame))
        except ProtocolError as exc:
            reply = encode(ERROR, code=exc.code, message=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client and logged
            logging.getLogger("faas.protocol").exception("control request failed")
            reply = encode(ERROR, code=E_INTERNAL, message=str(exc))
        sock.send_multipart([ident, reply])
