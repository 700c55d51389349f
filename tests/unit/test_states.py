import pytest

from faas_runtime.states import ALLOWED, TERMINAL, IllegalTransition, State, check_transition


def test_terminal_states_are_final():
    for st in TERMINAL:
        assert ALLOWED[st] == frozenset()


def test_lifecycle_paths():
    for a, b in [(State.QUEUED, State.DISPATCHED), (State.DISPATCHED, State.RUNNING),
                 (State.RUNNING, State.SUCCEEDED), (State.RUNNING, State.EVICTED), (State.EVICTED, State.QUEUED)]:
        check_transition(a, b)


@pytest.mark.parametrize("a,b", [(State.QUEUED, State.RUNNING), (State.SUCCEEDED, State.QUEUED),
                                 (State.QUEUED, State.SUCCEEDED), (State.EVICTED, State.RUNNING)])
def test_illegal(a, b):
    with pytest.raises(IllegalTransition):
        check_transition(a, b)
