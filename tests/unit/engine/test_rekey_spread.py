"""Sessions made at the same moment do not all rekey at the same moment.

Many engines handshake with a lighthouse within seconds of each other (all of them
after the lighthouse restarts: at its limit of 2,000 a second, 10,000 nodes in 5 s).
Each rekeyed exactly REKEY_AFTER_TIME after its own handshake, so the bunch came back
every 2 minutes for good: measured with 10,000 nodes (`benchmarks lighthouse
--rekey-period`, docs/performance.md), the rekeys came at the handshakes' own rate,
up to the lighthouse's handshake limit, instead of the 83 a second a spread would
need. An initiator now starts its rekey up to REKEY_JITTER early, drawn for each key
(from the Device's random source). Fails before the change: all 24 rekeyed at 120.0 s."""
import io
import random

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem, PeerStats
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import REKEY_AFTER_TIME, REKEY_JITTER, REKEY_RESPONDER_SLACK
from tests.harness.pki import TestCA


class QuietDataPath:
    """No traffic counters (the path judge has nothing to say); keys are accepted."""

    def __getattr__(self, name):
        return lambda *args: None

    def seal_control(self, slot, payload):
        return None

    def stats(self, slot):
        return PeerStats(0, 0, 0, 0, 0, None, None, 0, True)


def test_sessions_made_together_rekey_spread_over_the_jitter_window():
    ca = TestCA()
    log = Logger("t", stream=io.StringIO())
    wire = []
    lh = Device(ca.identity("lh"), QuietDataPath(), lambda pkt, addr: wire.append(pkt), lambda: ca.now * 10**9, log,
                accept_any=True, judge_paths=False)
    engines = []
    for i in range(24):
        out = []
        eng = Device(ca.identity(f"node-{i}"), QuietDataPath(), lambda pkt, addr, out=out: out.append(pkt),
                     lambda: ca.now * 10**9, log, rng=random.Random(i))
        peer = eng.add_peer(lh.me.cert, None, [("192.0.2.100", 4787)])
        eng.connect(peer, 0.0)  # all at the same moment
        lh.on_control([ControlItem(CTRL_RAW, -1, out.pop(), (f"192.0.2.{i + 1}", 4787))], 0.0)
        eng.on_control([ControlItem(CTRL_RAW, -1, wire.pop(), ("192.0.2.100", 4787))], 0.0)
        assert peer.session.current is not None and peer.session.current.initiator
        engines.append((eng, peer))
    started = {}
    now = 0.0
    while now < REKEY_AFTER_TIME + 1.0:
        now = round(now + 0.25, 6)
        for eng, peer in engines:
            eng.handle_timer(now)
            if peer.session.rekeys and eng.me.cert.name not in started:
                started[eng.me.cert.name] = now
    times = sorted(started.values())
    assert len(times) == 24
    assert REKEY_AFTER_TIME - REKEY_JITTER <= times[0] and times[-1] <= REKEY_AFTER_TIME
    assert times[-1] - times[0] >= REKEY_JITTER / 3  # spread, not one moment
    assert len(set(times)) >= 16
    # the responder's rekey stays after the latest an initiator starts: both do not race
    assert REKEY_AFTER_TIME < REKEY_AFTER_TIME + REKEY_RESPONDER_SLACK


def test_each_new_key_draws_again():
    """The jitter is drawn per key, not once per peer: a bunch keeps spreading out."""
    ca = TestCA()
    log = Logger("t", stream=io.StringIO())
    wire, out = [], []
    now, made = 0.0, 0.0
    wall = lambda: int((ca.now + now) * 10**9)  # noqa: E731 - each initiation newer than the last
    lh = Device(ca.identity("lh"), QuietDataPath(), lambda pkt, addr: wire.append(pkt), wall, log,
                accept_any=True, judge_paths=False)
    eng = Device(ca.identity("node"), QuietDataPath(), lambda pkt, addr: out.append(pkt), wall, log,
                 rng=random.Random(7))
    peer = eng.add_peer(lh.me.cert, None, [("192.0.2.100", 4787)])
    eng.connect(peer, 0.0)
    ages = []
    while len(ages) < 4:
        if out:
            lh.on_control([ControlItem(CTRL_RAW, -1, out.pop(), ("192.0.2.1", 4787))], now)
            eng.on_control([ControlItem(CTRL_RAW, -1, wire.pop(), ("192.0.2.100", 4787))], now)
            made = now
        now = round(now + 0.25, 6)
        before = peer.session.rekeys
        eng.handle_timer(now)
        if peer.session.rekeys != before:
            ages.append(now - made)
    assert all(REKEY_AFTER_TIME - REKEY_JITTER <= a <= REKEY_AFTER_TIME for a in ages)
    assert len(set(ages)) >= 3
