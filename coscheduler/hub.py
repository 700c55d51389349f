"""What the rooms of the co-scheduler share, and the one interface through which they do.

The rooms (agents.py: agent messages; requests.py: client requests; dispatch.py:
scheduling; reconcile.py: Slurm; leases.py: hot invocations) never reach into each
other or into the loop (daemon.py). Each gets this hub, which owns:

- the configuration and the database;
- the outbox: replies and orders are queued here and sent by the loop only after the
  step's transaction commits, so nothing goes out for work the database does not hold
  (``send`` to a client, ``send_agent`` to an agent session, with its MAC);
- the agent sessions: which ZeroMQ connection speaks for which node, proven by a
  munge credential at HELLO (agents.py makes them; everyone else only reads);
- ``mark_dirty``: something changed that may let queued work be placed;
- ``stats``: what agents report of each function (recent run time, where it is warm),
  which placement uses;
- ``cancelling``: functions whose bulk cancel is still being written in chunks: their
  queued invocations up to an id are never dispatched meanwhile;
- ``metrics``: each step's durations and the loop's counters (metrics.py);
- ``ended``: invocations that reached an end in this step, for the clients subscribed to
  them (subscriptions.py pushes ENDED after the commit); ``binary_results``: RESULTs'
  binary values (``VALUE_BIN``) are stored, so clients may ask for them.

It may not touch sockets or sessions of the database itself: it holds no transaction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from faas_runtime import protocol as P

from . import db as D
from .config import Config
from .metrics import LoopMetrics

RUN_TIME_WEIGHT = 0.2  # of the newest report in a function's moving-average run time
WARM_FOR_S = 30.0  # a slot that ran a function this recently probably holds a warm executor


class RequestFailed(Exception):
    """A request (or an agent message) refused with a typed error: ``code`` is a protocol.E_*."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class AgentSession:
    """One node's agent: the connection its authenticated HELLO came on, and the key
    that MACs what the co-scheduler sends it."""

    node: str
    identity: bytes  # the ROUTER's name for the connection (ZeroMQ chooses it, not the peer)
    key: bytes
    last_seen: float  # time.monotonic()
    # time.time() the session began: a RUN dispatched before it went to an earlier
    # connection, and can no longer reach this agent.
    began: float = field(default_factory=time.time)


@dataclass
class FunctionStats:
    """What agents report of functions: a moving average of run times (dispatch-ahead) and
    the slots that recently ran each (warm executors; placement prefers them)."""

    run_time: dict[str, float] = field(default_factory=dict)
    warm: dict[str, dict[str, float]] = field(default_factory=dict)  # slot id -> function key -> monotonic

    def note_run_time(self, fn: str, run_s: Any) -> None:
        if isinstance(run_s, bool) or not isinstance(run_s, (int, float)) or not 0 <= run_s < 1e9:
            return  # an agent that does not report it: the function is never dispatched ahead
        avg = self.run_time.get(fn)
        self.run_time[fn] = run_s if avg is None else avg + RUN_TIME_WEIGHT * (run_s - avg)

    def note_warm(self, slot_id: str, fn: str) -> None:
        self.warm.setdefault(slot_id, {})[fn] = time.monotonic()

    def warm_on(self, slot_id: str, now: float) -> frozenset[str]:
        entry = self.warm.get(slot_id)
        if not entry:
            return frozenset()
        for key in [k for k, t in entry.items() if now - t > WARM_FOR_S]:
            del entry[key]
        return frozenset(entry)


def fn_key(function_id: Any) -> str:
    return str(function_id)


class Hub:
    def __init__(self, config: Config, database: D.Database):
        self.config = config
        self.database = database
        self.sessions: dict[str, AgentSession] = {}  # node -> its agent's session
        self.by_identity: dict[bytes, AgentSession] = {}
        self.stats = FunctionStats()
        self.cancelling: dict[int, int] = {}  # function id -> highest invocation id being cancelled
        # Lends whose job's end Slurm has not been asked about yet (reconcile.py asks at once),
        # and those it has answered for: placement offers a lend only once its end is known.
        self.lends_to_check: set[str] = set()
        self.end_known: set[str] = set()
        # Slots written, and nodes whose work changed, in this process since placement last
        # read them (``slot_changed``, ``work_changed``): placement keeps the active slots and
        # the work on them in memory and rereads only these nodes (capacity.py).
        self.slots_changed: set[str] = set()
        self.nodes_changed: set[str] = set()
        self.dirty = True
        self.outbox: list[tuple[bytes, list[bytes]]] = []
        self.metrics = LoopMetrics()
        self.just_ended: list[tuple[int, str]] = []  # (invocation id, state) since the last push
        self.ended_reported = False  # a room calls ``ended``: subscriptions need not poll often
        self.binary_results = False  # set by the room that stores RESULT's VALUE_BIN (agents.py)

    def ended(self, inv_id: int, state: str) -> None:
        """Invocation ``inv_id`` ended ``state`` in this step's transaction (its subscriber
        hears it after the commit; a step that rolls back may leave a stale entry, which
        the client checks with RESULTS)."""
        self.ended_reported = True
        self.just_ended.append((inv_id, state))

    def mark_dirty(self) -> None:
        self.dirty = True

    def slot_changed(self, slot_id: str) -> None:
        """A room wrote this slot (lent, resized, revoked, its end learned): placement rereads
        it. Marking one whose write then rolls back is harmless; missing one is not."""
        self.slots_changed.add(slot_id)
        self.dirty = True

    def work_changed(self, node: Optional[str]) -> None:
        """Work on ``node`` was dispatched, ended, evicted, cancelled or adopted: placement
        rereads the node. As with ``slot_changed``, a needless mark costs a read; a missing
        one lasts until the rolling reread (capacity.RESYNC_S)."""
        if node:
            self.nodes_changed.add(node)
        self.dirty = True

    def send(self, identity: bytes, msg_type: str, **fields: Any) -> None:
        """A reply to a client (or an error to a connection without a session)."""
        self.outbox.append((identity, [P.encode(msg_type, **fields)]))

    def send_agent(self, to_node: Optional[str], msg_type: str, **fields: Any) -> bool:
        """An order to ``to_node``'s agent, MACed with its session key; False if it has none."""
        session = self.sessions.get(to_node or "")
        if session is None:
            return False
        frame = P.encode(msg_type, **fields)
        self.outbox.append((session.identity, [frame, P.mac(session.key, frame)]))
        return True

    def add_session(self, session: AgentSession) -> None:
        old = self.sessions.get(session.node)
        if old is not None:
            self.by_identity.pop(old.identity, None)
        self.sessions[session.node] = session
        self.by_identity[session.identity] = session

    def drop_session(self, node: str) -> None:
        old = self.sessions.pop(node, None)
        if old is not None:
            self.by_identity.pop(old.identity, None)
