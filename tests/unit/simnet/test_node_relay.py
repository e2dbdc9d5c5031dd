"""Nodes that relay for others ([relay] enabled = true; docs/engine.md "Relaying for
others"), on the simulated network: the lease names them, engines hold a session with
each, and a peer without a direct path is reached through one of them, not only
through a lighthouse. Lighthouses here do not relay, unless a test says so."""
from flatnet.engine import lighthouse_client as lc
from flatnet.engine.proto import relay as relaying
from tests.unit.simnet.test_simnet import FIRST_REPLY_WITHIN, ping_until


def ready(sim, *engines):
    """Registered, and every engine holds keys with every node relay of its lease."""
    def ok():
        return sim.registered(*engines) and all(
            e.client.node_relays and all(e.device.peers.get(n) is not None
                                         and e.device.peers[n].session.current is not None
                                         for n in e.client.node_relays) for e in engines if e.node_relay is None)
    sim.run_until(ok, 10, "registered, and sessions with the node relays")


def test_two_hosts_behind_port_randomizing_nats_reach_each_other_through_a_node_relay(make_sim):
    sim = make_sim(lighthouse_relay=False)
    r = sim.engine("relay-1", nat=None, relay=True)
    a, b = sim.engine("host-a", nat="random"), sim.engine("host-b", nat="random")
    ready(sim, r, a, b)
    assert a.client.node_relays == b.client.node_relays == ["relay-1"]
    start = sim.now
    took = ping_until(sim, a, b, 2, "traffic both ways through the node relay") - start
    assert took < FIRST_REPLY_WITHIN
    assert a.path(b) == b.path(a) == f"relayed via relay-1 ({r.addr[0]}:{r.addr[1]})"
    assert r.node_relay.forwarder.relayed >= 4
    assert sim.lighthouses[0].registry.relayed == 0
    # the relay opens nothing: its data path delivered none of their packets
    assert not r.received_from(a) and not r.received_from(b)


def test_a_node_relay_is_still_an_engine_reached_directly_and_through_a_relay(make_sim):
    """What is addressed to the relay itself is received (data under its receive
    indexes, handshakes with its mac1), also when it comes through the lighthouse's
    relay; only the rest is forwarded."""
    sim = make_sim()
    r = sim.engine("relay-1", nat="random", relay=True)
    a = sim.engine("host-a", nat="random")
    sim.run_until(lambda: sim.registered(r, a), 5, "registered")
    ping_until(sim, a, r, 3, "the relay's own traffic both ways")
    assert r.node_relay.forwarder.relayed == 0


def test_the_lease_names_only_nodes_certified_to_relay(make_sim):
    sim = make_sim(lighthouse_relay=False)
    fake = sim.engine("not-a-relay", nat=None)
    fake.client.offer_relay = True  # asks, without the group in its certificate
    a = sim.engine("host-a", nat="cone")
    sim.run_until(lambda: sim.registered(fake, a), 5, "registered")
    sim.run(lc.REGISTER_EVERY + 1)
    assert a.client.node_relays == []
    assert sim.lighthouses[0].registry.limited["relay_offers_refused"] >= 1


def test_a_node_relay_forwards_only_between_registered_nodes_it_holds_sessions_with(make_sim):
    """A packet from an address that is no peer's authenticated endpoint, or for a
    block nobody it holds a session with owns, is refused and counted."""
    sim = make_sim(lighthouse_relay=False)
    r = sim.engine("relay-1", nat=None, relay=True)
    a = sim.engine("host-a", nat=None)
    ready(sim, r, a)
    inner = bytes([3, 2, 0, 0]) + bytes(28)
    block_a = (int(a.subnet.network_address) - int(sim.network.network_address)) >> 8
    sim.router.send(("203.0.113.250", 4787), relaying.wrap(block_a, inner), r.addr)  # a stranger
    sim.router.send(a.addr, relaying.wrap(250, inner), r.addr)                         # nobody's block
    sim.router.send(a.addr, relaying.wrap(block_a, inner), r.addr)                     # to itself
    sim.run(0.1)
    # the stranger is dropped in the data path already (relay_unknown_sender), never handed up
    assert r.node_relay.refused == {"relay_unknown_target": 2} and r.dp.drops["relay_unknown_sender"] == 1
    assert r.node_relay.forwarder.relayed == 0


def test_node_relays_never_forward_for_each_other(make_sim):
    """One hop only: a node certified `relay` relays through lighthouses, and a node
    relay refuses to forward what another relay sends it (no packet bounces between
    relays)."""
    sim = make_sim(lighthouse_relay=False)
    r1, r2 = sim.engine("relay-1", nat=None, relay=True), sim.engine("relay-2", nat=None, relay=True)
    a = sim.engine("host-a", nat="cone")
    ready(sim, r1, r2, a)
    sim.run(3)
    assert r1.client.relays() == [] and r2.client.relays() == []
    assert r1.node_relay._sender(r2.addr, sim.now) is None
    assert [p.name for p in a.client.relays()] in (["relay-1", "relay-2"], ["relay-2", "relay-1"])
    assert a.client.relays(a.device.peers["relay-1"]) == []  # its answer could not come back through relay-2


def test_a_peer_whose_node_relay_dies_moves_to_another_relay(make_sim):
    sim = make_sim()  # the lighthouse relays too: the fallback
    r = sim.engine("relay-1", nat=None, relay=True)
    a, b = sim.engine("host-a", nat="random"), sim.engine("host-b", nat="random")
    ready(sim, r, a, b)
    ping_until(sim, a, b, 2, "traffic through the node relay")
    assert a.path(b).startswith("relayed via relay-1")
    sim.router.cut.add(r.addr[0])
    cut_at, lh = sim.now, sim.lighthouses[0].addr
    seen = len(a.received_from(b)), len(b.received_from(a))
    for _ in range(40):  # a packet each way every 0.5 s, as an application would
        a.send_to(b)
        b.send_to(a)
        sim.run(0.5)
        if len(a.received_from(b)) > seen[0] + 1 and len(b.received_from(a)) > seen[1] + 1:
            break
    assert a.path(b) == b.path(a) == f"relayed via {lh[0]}:{lh[1]}"
    # dead_after (3 s) to notice, then a handshake through the lighthouse
    assert sim.now - cut_at < 6


def test_a_target_without_a_session_with_the_node_relay_is_still_reached_at_once(make_sim):
    """host-b cannot reach the node relay (a filter drops their packets), so host-a's
    first handshake through it is refused there (relay_unknown_target). The punch
    the lighthouse sends host-b makes it handshake through a relay it can use (the
    lighthouse's), and host-a follows that path: no wait for a timer."""
    sim = make_sim()
    r = sim.engine("relay-1", nat=None, relay=True)
    a, b = sim.engine("host-a", nat="random"), sim.engine("host-b", nat="random")
    b_public = "198.51.100.3"  # host-b's NAT (its LAN is the third made)
    sim.router.drop_if = lambda p, s, d: (s[0] == b.addr[0] and d[0] == r.addr[0]) or (
        s[0] == r.addr[0] and d[0] == b_public)
    ready(sim, r, a)
    sim.run_until(lambda: sim.registered(b), 5, "host-b registered")
    start = sim.now
    a.send_to(b)
    sim.run_until(lambda: bool(b.received_from(a)), 5, "host-a's first packet delivered")
    assert sim.now - start < FIRST_REPLY_WITHIN
    lh = sim.lighthouses[0].addr
    assert a.path(b) == b.path(a) == f"relayed via {lh[0]}:{lh[1]}"


def test_an_idle_session_with_a_node_relay_stays_usable_at_a_bounded_cost(make_sim):
    """Keys expire after 180 s without a handshake and NAT mappings close: the engine
    handshakes with a relay it heard nothing from for RELAY_KEEP seconds (not a
    keepalive every register: liveness then probed each with a handshake)."""
    sim = make_sim(lighthouse_relay=False)
    r = sim.engine("relay-1", nat=None, relay=True)
    a, b = sim.engine("host-a", nat="random"), sim.engine("host-b", nat="random")
    ready(sim, r, a, b)
    p = a.device.peers["relay-1"]
    before = p.session.handshakes
    sim.run(400)
    assert p in a.client.relays() and p.session.current is not None
    # both roles count (both sides start one after the keys' REKEY_AFTER_TIME): 48
    # measured here; a keepalive with every register made 18 in 120 s (60 in 400 s)
    assert p.session.handshakes - before <= 400 / 5
    ping_until(sim, a, b, 2, "traffic through the relay after 400 s idle")
    assert a.path(b).startswith("relayed via relay-1")
