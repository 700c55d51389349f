"""Invocation states: the one enum, its terminal sets, and the one transition rule.

    QUEUED -> DISPATCHED -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
    DISPATCHED | RUNNING -> EVICTED -> QUEUED     (while attempts < max_attempts)
                                    -> FAILED     (attempts exhausted)

Only ``db.transition`` and ``db.transition_many`` change an invocation's state, and they
ask ``check_transition`` first for every step; the database schema repeats the rule so
that no other writer can break it.

Owns: the invocation state enum and the transition rule. May not touch: anything (pure).
"""
from __future__ import annotations

import enum


class State(str, enum.Enum):
    QUEUED = "QUEUED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    EVICTED = "EVICTED"

    def __str__(self) -> str:  # click and logs print the bare name
        return self.value


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.CANCELLED})
# States in which an invocation holds capacity on a slot.
ON_SLOT = frozenset({State.DISPATCHED, State.RUNNING})

ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.DISPATCHED, State.CANCELLED}),
    State.DISPATCHED: frozenset(
        {State.RUNNING, State.EVICTED, State.FAILED, State.CANCELLED, State.SUCCEEDED, State.TIMED_OUT}
    ),
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.CANCELLED, State.EVICTED}
    ),
    State.EVICTED: frozenset({State.QUEUED, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.TIMED_OUT: frozenset(),
    State.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A state change that the lifecycle above does not allow."""


def check_transition(current: State, new: State) -> None:
    if new not in ALLOWED[current]:
        raise IllegalTransition(f"invocation cannot go from {current} to {new}")


def allowed_pairs() -> list[tuple[str, str]]:
    """Every legal (from, to) pair, for the schema-level guard."""
    return sorted((a.value, b.value) for a, targets in ALLOWED.items() for b in targets)
