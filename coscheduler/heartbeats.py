"""Heartbeats, part of the agents' room (agents.py, whose AgentRoom inherits this): each
agent says every ``heartbeat_s`` what it holds and the newest RUN it has read.

At scale they are most of what the co-scheduler reads, so a heartbeat only updates memory
as it is read (the session's ``last_seen``, what the agent holds: ``heartbeat``), with no
transaction; the liveness step checks what they say against the database in bulk, once a
second (``check_held``). The period grows with the agents (``heartbeat_s``): one a second
on a small cluster, about HEARTBEATS_PER_S in all on a large one, but never fewer than
BEATS_PER_GRACE per liveness grace (``agent_grace_s``), so a live agent is never taken
for a dead one. Agents learn it from their WELCOME, and from an ACK when they beat at an
older one.

May not touch: anything but what agents.py may.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.states import ON_SLOT

from . import db as D
from . import fields as F
from .db.bulk import chunks
from .hub import AgentSession, Hub, RequestFailed, fn_key

log = logging.getLogger("faas.coscheduler")

HEARTBEATS_PER_S = 400
BEATS_PER_GRACE = 6
CHECK_HELD_EVERY_S = 1.0  # how often heartbeats are checked against the database


class Heartbeats:
    """Mixed into AgentRoom: uses its ``hub`` and ``session_of``."""

    hub: Hub

    def _init_heartbeats(self) -> None:
        self._heard: dict[str, tuple[float, set[int]]] = {}  # node -> (seen, held) of its latest heartbeat
        self._checked: dict[str, float] = {}  # node -> when its holdings were last checked (monotonic)
        self._next_held_check = time.monotonic()
        # HELLOs whose WELCOME is being made (agents.py): when thousands of agents register
        # at once, the first ones learn a period for all of them, not for the few welcomed.
        self.welcoming = 0

    def heartbeat_s(self) -> float:
        """The heartbeat period agents are told (WELCOME, and an ACK to an agent that beats
        at another): it grows with the sessions (and the agents being welcomed), within
        [1 s, agent_grace_s / BEATS_PER_GRACE]."""
        ceiling = self.hub.config.agent_grace_s / BEATS_PER_GRACE
        wanted = (len(self.hub.sessions) + self.welcoming) / HEARTBEATS_PER_S
        return round(max(P.HEARTBEAT_INTERVAL_S, min(wanted, ceiling)), 1)

    def heartbeat(self, identity: bytes, msg: dict) -> None:
        """A HEARTBEAT, taken as it is read: it only updates memory (the session's last_seen,
        what the agent holds), so it needs no transaction; the database sees it in
        step_liveness (_check_held)."""
        try:
            session = self.session_of(identity, msg)
            if session is not None:
                self._beat(session, msg)
        except (P.ProtocolError, RequestFailed) as exc:
            log.info("refused a heartbeat: %s: %s", exc.code, exc)
            self.hub.send(identity, P.ERROR, code=exc.code, message=str(exc))

    def _beat(self, session: AgentSession, msg: dict) -> None:
        self.hub.metrics.count("heartbeats")
        held = msg.get("running", [])
        if not isinstance(held, list) or len(held) > F.MAX_IDS:
            raise F.invalid("running must be a list of [invocation id, attempt]")
        # Checked against the database in bulk, once a grace per node (_check_held), for
        # work dispatched no later than the newest RUN the agent had read (``seen``).
        seen = msg.get("seen")
        seen = float(seen) if isinstance(seen, (int, float)) and not isinstance(seen, bool) else 0.0
        self._heard[session.node] = (seen, {h[0] for h in held if isinstance(h, list) and h and isinstance(h[0], int)})
        self._note_warm(msg.get("warm"))
        every, period = msg.get("every"), self.heartbeat_s()
        if isinstance(every, (int, float)) and not isinstance(every, bool) and abs(every - period) > 0.25 * period:
            # It beats at the period of an older WELCOME (fewer agents then): tell it the new one.
            self.hub.send_agent(session.node, P.ACK, reports=[], heartbeat_s=period)

    def _note_warm(self, warm: Any) -> None:
        """Optional heartbeat field ``warm``: {slot_id: [function ids with an idle executor]}."""
        if not isinstance(warm, dict) or len(warm) > 1024:
            return
        for slot_id, fns in warm.items():
            if isinstance(fns, list):
                for fn in fns[:1024]:
                    self.hub.stats.note_warm(str(slot_id)[:300], fn_key(fn))

    def check_held(self) -> None:
        """Once a second: what heartbeats said, against the database (_check_held)."""
        now = time.monotonic()
        if now < self._next_held_check or not self._heard:
            return
        self._next_held_check = now + CHECK_HELD_EVERY_S
        grace = self.hub.config.dispatch_grace_s
        if any(now - self._checked.get(n, 0.0) >= grace for n in self._heard):  # else no transaction
            with self.hub.database.session(write=True) as s:
                self._check_held(s)

    def _check_held(self, s: Session) -> None:
        """What heartbeats say agents hold, against the database: work dispatched to a node
        more than ``dispatch_grace_s`` ago, and before the newest RUN its agent had read when
        it beat (or before its session began), that the agent does not hold was lost on the
        way (a RUN it never got, or an agent that restarted) and is requeued. One query for
        all the nodes due, each node at most once per grace: thousands of heartbeats a second
        cost a query or two."""
        grace = self.hub.config.dispatch_grace_s
        now = time.monotonic()
        due = {n: heard for n, heard in self._heard.items() if now - self._checked.get(n, 0.0) >= grace}
        if not due:
            return
        for n in due:
            del self._heard[n]
            self._checked[n] = now
        cutoff = D.utcnow() - dt.timedelta(seconds=grace)
        lost: list[int] = []
        for chunk in chunks(sorted(due)):
            # Columns, not rows: nearly all of it is held, and loading it whole was the cost.
            for inv_id, node, dispatched_at in s.execute(select(
                    D.Invocation.id, D.Invocation.node, D.Invocation.dispatched_at).where(
                    D.Invocation.state.in_([st.value for st in ON_SLOT]), D.Invocation.node.in_(chunk),
                    D.Invocation.dispatched_at < cutoff)):
                seen, held = due[node]
                session = self.hub.sessions.get(node)
                reached = max(seen, session.began if session else 0.0)  # RUNs it has read, or never will
                if inv_id not in held and dispatched_at.timestamp() <= reached + 1e-3:  # clock rounding
                    lost.append(inv_id)
        for chunk in chunks(lost):
            for inv in s.scalars(select(D.Invocation).where(D.Invocation.id.in_(chunk))):
                self.hub.work_changed(inv.node)  # before evict() forgets the node
                D.evict(s, inv, f"agent on {inv.node} does not run it")
