"""Timer edges a real clock hides: a deadline that get_timer() reports must be one at
which handle_timer() acts. On a virtual clock a deadline that does nothing re-arms at
the same instant forever; the real driver spins on it until time.monotonic() moves on.
tests/harness/simnet.py counts such runs in Sim.spins."""
from flatnet.engine.proto.liveness import Liveness, PathState, Probe


def test_the_liveness_deadline_is_when_it_acts():
    """1.13 + 1.5 - 1.13 < 1.5 in floats: update() once tested now - waiting >= probe_after,
    false at the deadline get_timer() gave (a timer that fired and did nothing)."""
    live = Liveness(3.0)
    live.update(1.1300000000000001, 1.07, 1.13)  # sent at 1.13, last heard at 1.07
    due = live.get_timer()
    assert live.update(2.13, 1.07, due) == [Probe()] and live.state is PathState.SUSPECT

