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



def test_the_session_keepalive_deadline_is_when_it_acts():
    """last_tx + KEEPALIVE_TIMEOUT - last_tx < KEEPALIVE_TIMEOUT for some floats: the
    session once tested now - last_tx >= KEEPALIVE_TIMEOUT, false at the deadline
    get_timer() gave (the 50-node simnet test hit it; the simnet stepped 1 ns past it)."""
    from flatnet.engine.proto.constants import KEEPALIVE_TIMEOUT
    from flatnet.engine.proto.session import SendKeepalive
    from tests.unit.engine.test_session import Pair

    last_tx = next(x / 100 for x in range(100, 20000) if (x / 100 + KEEPALIVE_TIMEOUT) - x / 100 < KEEPALIVE_TIMEOUT)
    pair = Pair()
    pair.a.want_keys(0.0)
    pair.exchange()
    pair.deliver(pair.a, pair.b, pair.b_id)
    assert pair.a.current is not None
    while pair.a.next_event() is not None:
        pass
    created = pair.a.current.created
    pair.a.last_tx, pair.a.last_rx = last_tx, last_tx  # sent and heard then: only the keepalive is due next
    due = pair.a.get_timer()
    assert due == last_tx + KEEPALIVE_TIMEOUT and due < created + 120
    pair.a.handle_timer(due)
    assert isinstance(pair.a.next_event(), SendKeepalive)
    assert pair.a.get_timer() > due  # nothing left due at that instant: no spin
