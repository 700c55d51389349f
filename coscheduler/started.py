"""STARTED reports held back for one loop turn, so that a short invocation's STARTED and
RESULT are one row write. Part of the agents' room (agents.py).

An agent reports STARTED when an invocation starts and RESULT when it ends. For a short
function the two arrive in the same or the next loop turn, and each was a write of the
invocation's row (on PostgreSQL a new version of the row in every index of the table):
a third of the row writes of a no-op. So a STARTED is held (``hold``) until the end of
the next turn: a report on the same attempt meanwhile takes it (``take``) and writes
DISPATCHED -> RUNNING -> its end as one row change, with both events at the times they
arrived. Otherwise ``flush`` writes it then, with the time it arrived, if the invocation
is still DISPATCHED on that attempt on that node; if it was cancelled or requeued
meanwhile, it is dropped, as a STARTED arriving after those is.

What is held lives in memory only: a co-scheduler that stops loses at most a turn of
STARTEDs, which the agents' next HELLO (``held`` with ``running``) or RESULT repairs.

May not touch: anything but the invocations it was told of.
"""
from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy.orm import Session

from faas_runtime.states import State

from . import db as D


class Held(NamedTuple):
    node: str
    attempt: int
    at: dt.datetime  # when the STARTED arrived: the time its event records
    turn: int


class HeldStarts:
    def __init__(self) -> None:
        self._held: dict[int, Held] = {}  # invocation id -> its STARTED
        self.turn = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, row: D.ReportRow, at: dt.datetime) -> None:
        """A STARTED on ``row`` (checked to come from its node, on its attempt) at ``at``."""
        if row.state is State.DISPATCHED:
            self._held[row.id] = Held(row.node, row.attempts, at, self.turn)

    def take(self, inv_id: int, node: str, attempt: int, row: D.ReportRow) -> list[D.Change]:
        """Before another report on ``row``: its held STARTED for this attempt on this node,
        as a change to put in front (``row`` becomes RUNNING), or none; forgotten either way."""
        held = self._held.get(inv_id)
        if held is None or held.node != node or held.attempt != attempt:
            return []
        del self._held[inv_id]
        if row.state is not State.DISPATCHED:
            return []
        row.state = State.RUNNING
        return [D.Change(inv_id, State.DISPATCHED, State.RUNNING, held.at)]

    def step(self, database: D.Database) -> None:
        """The loop's turn ended (the agents' liveness step): write what is due, in a
        transaction of its own."""
        if self.next_turn():
            with database.session(write=True) as s:
                self.flush(s)

    def next_turn(self) -> bool:
        """A loop turn ended; True when STARTEDs held since an earlier turn must be written."""
        self.turn += 1
        return any(h.turn < self.turn - 1 for h in self._held.values())

    def flush(self, s: Session) -> None:
        """Write the STARTEDs held since an earlier turn whose invocation is still
        DISPATCHED on that attempt and node (in the caller's transaction)."""
        due = {i: h for i, h in self._held.items() if h.turn < self.turn - 1}
        if not due:
            return
        rows = D.report_rows(s, due)
        changes = []
        for inv_id, held in due.items():
            row = rows.get(inv_id)
            if row is not None and row.state is State.DISPATCHED and row.node == held.node and \
                    row.attempts == held.attempt:
                changes.append(D.Change(inv_id, State.DISPATCHED, State.RUNNING, held.at))
        D.transition_many(s, changes)
        for inv_id in due:  # after the write: if it fails, they are tried again next turn
            del self._held[inv_id]
