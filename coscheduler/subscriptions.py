"""Results pushed to clients: who waits for which invocations, and telling them when they end.

A client subscribes invocations of its own (SUBSCRIBE, or INVOKE_BATCH ``subscribe`` =
true) on its connection; when one ends, the co-scheduler sends that connection ENDED
(``ended``: [[id, state], ...]) after the transaction that ended it committed, so a client
waiting for 10,000 futures sends no polls. The client then collects the values by id
(RESULTS), which also serves a client that lost its connection: a push to a connection
that is gone is dropped by ZeroMQ, and the new connection asks by id (or subscribes again).

Where invocations end: rooms call ``hub.ended(id, state)`` in the step that ends them;
``step_push`` sends what they noted. A sweep looks up the subscribed ids that ended in
the database every ``POLL_S`` (``SAFETY_POLL_S`` once the rooms report ends), so nothing
is missed whichever way an invocation ended.

Bounds: one subscriber per invocation (the latest connection), only the owner's own
unfinished invocations (so the total is bounded by the users' queue quotas), at most
``MAX_SUBSCRIBE`` ids per request.

May not touch: anything but reads of invocations' states; agent sessions; placement.
"""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.states import TERMINAL

from . import db as D
from . import fields as F
from .hub import Hub

MAX_SUBSCRIBE = 100_000  # ids per SUBSCRIBE request
PUSH_CHUNK = 5_000  # [id, state] pairs per ENDED message
POLL_S = 0.2  # between sweeps while no room reports ends
SAFETY_POLL_S = 5.0  # ... and once they do
SWEEP_IDS = 50_000  # subscribed ids looked up per sweep (the rest in the next)
TERMINAL_NAMES = [st.value for st in TERMINAL]


class Subscriptions:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.subscriber: dict[int, bytes] = {}  # invocation id -> the connection waiting for it
        self._next_sweep = 0.0
        self._cursor = 0  # where the next sweep starts in the subscribed ids

    # -- requests ---------------------------------------------------------------------------

    def subscribe(self, s: Session, identity: bytes, uid: int, msg: dict) -> dict:
        """SUBSCRIBE ``ids``: those of the caller's that have not ended are watched on this
        connection; the reply lists those that already ended, and ids that are not theirs."""
        ids = F.ids(msg.get("ids"), "ids", MAX_SUBSCRIBE)
        states = D.states_of(s, ids)
        ended, unknown, watched = [], [], []
        for inv_id in dict.fromkeys(ids):
            state, owner = states.get(inv_id, (None, None))
            if state is None or (owner != uid and uid != 0):
                unknown.append(inv_id)
            elif state in TERMINAL_NAMES:
                ended.append([inv_id, state])
            else:
                watched.append(inv_id)
        self.watch(identity, watched)
        return {"subscribed": len(watched), "ended": ended, "unknown": unknown}

    def watch(self, identity: bytes, ids: list[int]) -> None:
        """Tell ``identity`` when each of ``ids`` (checked to be its user's) ends."""
        for inv_id in ids:
            self.subscriber[inv_id] = identity

    # -- the loop's step --------------------------------------------------------------------

    def step_push(self) -> None:
        """Send ENDED for what the rooms noted, and for what a sweep finds ended."""
        ended = self.hub.just_ended
        self.hub.just_ended = []
        now = time.monotonic()
        if self.subscriber and now >= self._next_sweep:
            self._next_sweep = now + (SAFETY_POLL_S if self.hub.ended_reported else POLL_S)
            ended += self._sweep()
        by_peer: dict[bytes, list[list[Any]]] = {}
        for inv_id, state in ended:
            identity = self.subscriber.pop(inv_id, None)
            if identity is not None:
                by_peer.setdefault(identity, []).append([inv_id, state])
        for identity, pairs in by_peer.items():
            for start in range(0, len(pairs), PUSH_CHUNK):
                self.hub.send(identity, P.ENDED, ended=pairs[start:start + PUSH_CHUNK])

    def _sweep(self) -> list[tuple[int, str]]:
        """Subscribed ids (up to SWEEP_IDS, round robin) that ended, or no longer exist."""
        ids = list(self.subscriber)
        if self._cursor >= len(ids):
            self._cursor = 0
        part = ids[self._cursor:self._cursor + SWEEP_IDS]
        self._cursor += len(part)
        with self.hub.database.session() as s:
            found = D.states_of(s, part)
        out = [(i, st) for i, (st, _owner) in found.items() if st in TERMINAL_NAMES]
        for inv_id in part:
            if inv_id not in found:  # its batch rolled back, or retention deleted it
                self.subscriber.pop(inv_id, None)
        return out


def install(hub: Hub, clients: Any) -> Subscriptions:
    """Subscriptions served to the clients' room (requests.py)."""
    subs = Subscriptions(hub)
    clients.connection_handlers[P.SUBSCRIBE] = subs.subscribe
    clients.on_queued = subs.watch
    return subs
