"""Device + path liveness on a virtual clock, with a data path whose counters the test
moves: a peer that answered and then went silent is probed (a handshake to every
candidate endpoint), reported unreachable once (log, peer table, hook), and comes back
by itself when its packets flow again."""
import io
import ipaddress
import random

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem, PeerStats
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from tests.harness.pki import TestCA


class CountersDataPath:
    def __init__(self):
        self.last_tx = None
        self.last_rx = None

    def __getattr__(self, name):
        return lambda *args: None

    def seal_control(self, slot, payload):
        return b"keepalive"

    def stats(self, slot):
        return PeerStats(0, 0, 0, 0, 0, self.last_tx, self.last_rx, 0, True)


def setup():
    ca = TestCA()
    ids = {n: ca.identity(n) for n in ("host-a", "host-b")}
    wire = []
    out = io.StringIO()
    dps = {n: CountersDataPath() for n in ids}
    # seeded: two runs of a test see the same rekey jitter (engine/proto/session.py)
    devs = {n: Device(ids[n], dps[n], lambda pkt, addr, n=n: wire.append((n, pkt, addr)), lambda: ca.now * 10**9,
                      Logger("t", stream=out), rng=random.Random(n), dead_after=3.0) for n in ids}
    a, b = devs["host-a"], devs["host-b"]
    pa = a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"),
                    [("192.0.2.2", 4787), ("198.51.100.2", 4787)])
    b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [("192.0.2.1", 4787)])
    a.connect(pa, 0.0)
    _, init, _ = wire.pop()
    b.on_control([ControlItem(CTRL_RAW, -1, init, ("192.0.2.1", 4787))], 0.1)
    _, resp, _ = next(w for w in wire if w[0] == "host-b" and w[1][0] == 2)
    a.on_control([ControlItem(CTRL_RAW, -1, resp, ("192.0.2.2", 4787))], 0.2)
    wire.clear()
    return a, b, pa, dps["host-a"], wire, out


def test_silent_peer_is_probed_marked_unreachable_once_and_recovers():
    a, b, pa, dp, wire, out = setup()
    dead = []
    a.on_path_dead = lambda peer, now: dead.append((peer.name, now))
    dp.last_rx = dp.last_tx = 1.0
    a.handle_timer(1.0)
    assert a.peer_table(1.0)[0]["state"] == "established"
    dp.last_tx = 2.0  # sent; the cut: nothing comes back from now on
    for t in (2.0, 3.0, 3.6):
        a.handle_timer(t)
    probes = [addr for src, pkt, addr in wire if src == "host-a" and pkt[0] == 1]
    assert probes == [("192.0.2.2", 4787), ("198.51.100.2", 4787)]  # every candidate endpoint
    assert not dead and "peer_unreachable" not in out.getvalue()
    for t in (5.0, 5.5, 6.0, 7.0, 8.0):
        dp.last_tx = t
        a.handle_timer(t)
    [row] = a.peer_table(8.0)
    assert row["state"] == "unreachable" and "no answer for 3.0 s" in row["unreachable_reason"]
    assert row["times_unreachable"] == 1 and dead == [("host-b", 5.0)]
    assert out.getvalue().count("event=peer_unreachable") == 1
    assert a.get_timer() <= 9.0  # the next probe
    # the path returns: the peer's packets are authenticated by the data path
    dp.last_rx = 8.4
    a.handle_timer(8.5)
    [row] = a.peer_table(8.5)
    assert row["state"] == "established" and row["unreachable_reason"] is None
    assert out.getvalue().count("event=peer_reachable") == 1 and "down_for=3.5" in out.getvalue()


def test_an_idle_peer_stays_established():
    a, b, pa, dp, wire, out = setup()
    dp.last_rx = dp.last_tx = 1.0
    for t in range(1, 60):
        a.handle_timer(float(t))
    assert a.peer_table(60.0)[0]["state"] == "established" and "peer_unreachable" not in out.getvalue()


def test_the_gateway_route_table_names_the_unreachable_host():
    a, b, pa, dp, wire, out = setup()
    routes = {"routes": [{"service": "wiki", "host": "wiki", "node": "host-b", "upstreams": [
        {"addr": "10.87.2.5:80", "kind": "overlay"}, {"addr": "192.0.2.2:80", "kind": "gateway"}]},
        {"service": "notes", "host": "notes", "node": "host-a", "upstreams": [
            {"addr": "10.87.1.5:80", "kind": "overlay"}]}]}
    assert "down" not in str(a.mark_unreachable(routes))
    dp.last_rx, dp.last_tx = 1.0, 2.0
    for t in (2.0, 4.0, 5.0):
        a.handle_timer(t)
    doc = a.mark_unreachable(routes)
    wiki, notes = doc["routes"]
    assert wiki["upstreams"][0]["down"].startswith("the engine cannot reach host host-b: no answer for 3.0 s")
    assert "down" not in wiki["upstreams"][1] and "down" not in str(notes)


def test_a_session_without_keys_is_not_probed():
    """Keys closed (a revoked pinned lighthouse, or expired): liveness still reports, but
    sends no handshake of its own."""
    a, b, pa, dp, wire, out = setup()
    dp.last_rx, dp.last_tx = 1.0, 2.0
    pa.session.close()
    a._apply(pa)
    for t in (2.0, 4.0, 5.0, 6.0, 7.0):
        a.handle_timer(t)
    assert a.peer_table(7.0)[0]["state"] == "unreachable"
    assert not [w for w in wire if w[1][0] == 1]


def test_a_device_that_does_not_judge_paths_sends_no_probe():
    """A lighthouse's Device (judge_paths=False): what it sends are answers that nobody
    answers in turn; silence after them is normal and must not start a handshake per
    answer (10,000 nodes queried once each made 10,000 handshakes a second, retried for
    a minute, and the lighthouse stopped answering queries)."""
    a, b, pa, dp, wire, out = setup()
    a.judge_paths = False
    dp.last_rx, dp.last_tx = 1.0, 2.0  # an answer went out, nothing came back
    for t in (2.0, 3.6, 5.0, 6.0, 7.0, 12.0):
        a.handle_timer(t)
    assert not [w for w in wire if w[1][0] == 1]
    assert a.peer_table(12.0)[0]["state"] == "established" and "peer_unreachable" not in out.getvalue()


def test_the_lighthouse_builds_its_device_without_path_judging():
    import inspect
    from flatnet.lighthouse import server
    assert "judge_paths=False" in inspect.getsource(server.Lighthouse._make_device)


class CountingStats:
    def __init__(self, stats):
        self.stats, self.calls = stats, 0

    def __call__(self, slot):
        self.calls += 1
        return self.stats(slot)


def test_without_path_judging_a_tick_skips_peers_until_their_deadline_and_sends_the_same():
    """A lighthouse's tick looks at a session only when its deadline has come (10,000
    sessions made each tick a fifth of a second of CPU). Driven with the same traffic,
    it sends the same packets at the same ticks as a device that looks at every
    session every tick (keepalives, the dead-peer handshake, rekeys)."""
    import random
    runs = []
    for skip in (True, False):
        a, b, pa, dp, wire, out = setup()
        a.judge_paths = False
        dp.stats = CountingStats(dp.stats)
        rng = random.Random(7)
        sent = []
        for t in range(1, 400):
            if rng.random() < 0.05:
                dp.last_tx = t - 0.5  # an answer went out
            if rng.random() < 0.03:
                dp.last_rx = t - 0.5  # the node said something
            if not skip:
                pa.due = 0.0
            a.handle_timer(float(t))
            sent += [(t, pkt[0], len(pkt)) for src, pkt, _ in wire if src == "host-a"]
            wire.clear()
        runs.append((sent, dp.stats.calls))
    (fast, fast_reads), (full, full_reads) = runs
    assert [(t, k) for t, k, _ in fast] == [(t, k) for t, k, _ in full] and fast
    assert {k for _, k, _ in fast} >= {1}  # the run includes handshakes (rekey or dead peer)
    assert fast_reads < full_reads / 3
