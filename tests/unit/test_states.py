import pytest

from faas_runtime.states import (ALLOWED, ON_SLOT, TERMINAL, IllegalTransition, State, allowed_pairs,
                                 check_transition)


def test_terminal_states_are_final():
    for st in TERMINAL:
        assert ALLOWED[st] == frozenset()


def test_lifecycle_paths():
    for a, b in [(State.QUEUED, State.DISPATCHED), (State.DISPATCHED, State.RUNNING),
                 (State.RUNNING, State.SUCCEEDED), (State.RUNNING, State.EVICTED), (State.EVICTED, State.QUEUED)]:
        check_transition(a, b)  # raises if illegal
        assert b in ALLOWED[a]


def test_the_whole_transition_table():
    """Every legal step, and nothing else: the lifecycle of the module's docstring."""
    Q, D, R, S, F, T, C, E = (State.QUEUED, State.DISPATCHED, State.RUNNING, State.SUCCEEDED, State.FAILED,
                              State.TIMED_OUT, State.CANCELLED, State.EVICTED)
    legal = {(Q, D), (Q, C), (D, R), (D, E), (D, F), (D, C), (D, S), (D, T),
             (R, S), (R, F), (R, T), (R, C), (R, E), (E, Q), (E, F)}
    for a in State:
        for b in State:
            if (a, b) in legal:
                check_transition(a, b)
            else:
                with pytest.raises(IllegalTransition, match=f"from {a} to {b}"):
                    check_transition(a, b)
    assert allowed_pairs() == sorted((a.value, b.value) for a, b in legal)
    assert TERMINAL == {S, F, T, C} and ON_SLOT == {D, R}
    assert {str(s) for s in State} == {s.value for s in State}


@pytest.mark.parametrize("a,b", [(State.QUEUED, State.RUNNING), (State.SUCCEEDED, State.QUEUED),
                                 (State.QUEUED, State.SUCCEEDED), (State.EVICTED, State.RUNNING)])
def test_illegal(a, b):
    with pytest.raises(IllegalTransition):
        check_transition(a, b)
