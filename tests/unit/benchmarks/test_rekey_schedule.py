"""The rekey-period generator's pure parts (tests/harness/simkeep.py): the schedule of
the engine sessions' timers and the per-second counts, on a virtual clock."""
import itertools

import pytest

from benchmarks.lighthouse_period import PASSIVE_EVERY, passive_names
from flatnet.engine.proto import handshake as hsm
from flatnet.engine.proto.constants import REKEY_AFTER_TIME
from flatnet.engine.proto.noise import public_key
from flatnet.engine.proto.session import PeerSession
from tests.harness.pki import TestCA
from tests.harness.simkeep import PerSecond, Schedule, _Passive

WALL0 = 1_700_000_000 * 10**9


def test_schedule_gives_each_key_once_at_its_latest_deadline():
    s = Schedule()
    s.arm("a", 5.0)
    s.arm("b", 3.0)
    s.arm("a", 7.0)  # moved later: the entry at 5.0 is stale
    s.arm("c", None)  # no timer: not armed
    assert s.due(4.0) == ["b"]
    assert s.due(6.0) == []
    assert len(s) == 1
    assert s.due(7.0) == ["a"]
    assert s.due(100.0) == [] and len(s) == 0
    s.arm("a", 9.0)
    s.arm("a", None)  # disarmed
    assert s.due(100.0) == []


def test_per_second_counts_max_and_p99_over_all_seconds():
    st = PerSecond(100.0)
    for t in (100.1, 100.9, 101.5, 150.0):
        st.note("x", t)
    st.note("x", 150.5, 5)
    v = st.summary("x", 200)  # 197 of the 200 seconds empty: the 99th percentile (rank 198) is 1
    assert v == {"total": 9, "max_per_s": 6, "p99_per_s": 1, "seconds_with_any": 3, "first_s": 0, "last_s": 50}
    assert st.timeline("x", 3) == [2, 1, 0]
    assert st.summary("none", 10)["max_per_s"] == 0 and st.total("x") == 9


def test_passive_nodes_are_about_one_percent_at_every_lighthouse():
    names = [f"n{i}" for i in range(10_000)]
    passive = passive_names(names)
    assert 95 <= len(passive) <= 105 and PASSIVE_EVERY > 1
    # the etcd run puts every 4th node at lh2 (bench_lighthouse REMOTE_EVERY)
    from benchmarks.bench_lighthouse import REMOTE_EVERY
    at = {int(n[1:]) % REMOTE_EVERY for n in passive}
    assert at == set(range(REMOTE_EVERY))


@pytest.fixture(scope="module")
def ca():
    return TestCA()


def _sessions(ca, made: list[float], passive: set[int] = frozenset()):
    """Node sessions (initiators) to a lighthouse, each with keys made at made[i]."""
    lh = ca.identity("lh")
    clock = {"now": 0.0}
    counter = itertools.count(1)
    out = []
    for i, t in enumerate(made):
        me = ca.identity(f"n{i}")
        cls = _Passive if i in passive else PeerSession
        node = cls(me, "lh", public_key(lh.static_private), lambda: next(counter), lambda i: None,
                   lambda: WALL0 + int(clock["now"] * 1e9))
        far = PeerSession(lh, f"n{i}", public_key(me.static_private), lambda: next(counter), lambda i: None,
                          lambda: WALL0 + int(clock["now"] * 1e9))
        clock["now"] = t
        node.want_keys(t)
        [(init, _)] = node.datagrams_to_send()
        far.receive_initiation(hsm.consume_initiation(lh, init, WALL0 / 1e9 + t), ("192.0.2.1", 4787), t)
        [(resp, _)] = far.datagrams_to_send()
        node.receive_response(resp, t)
        while node.next_event() is not None:
            pass
        out.append(node)
    return out


def test_sessions_rekey_at_the_engines_time_from_their_own_handshake(ca):
    """Driven through the Schedule as the generator drives them: each node starts its
    rekey when its own session says, measured from its own handshake; a passive node
    never does. (The engine's rekey time: REKEY_AFTER_TIME, less the session's jitter.)"""
    made = [0.0, 0.5, 3.0, 10.0]
    nodes = _sessions(ca, made, passive={3})
    sched = Schedule()
    for i, n in enumerate(nodes):
        sched.arm(i, n.get_timer())
    started = {}
    now = 0.0
    while now < 140.0:
        now = round(now + 0.25, 6)
        for i in sched.due(now):
            n = nodes[i]
            before = n.rekeys
            n.handle_timer(now)
            n.datagrams_to_send()
            while n.next_event() is not None:
                pass
            if n.rekeys != before:
                started[i] = now
            sched.arm(i, n.get_timer())
    assert set(started) == {0, 1, 2}  # the passive node leaves it to the lighthouse
    for i, t in started.items():
        age = t - made[i]
        assert REKEY_AFTER_TIME - 30.0 <= age <= REKEY_AFTER_TIME + 0.25, (i, age)
