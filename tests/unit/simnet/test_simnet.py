"""The control plane on a simulated network (tests/harness/simnet.py): real Noise
handshakes and lighthouse messages, NATs, loss and cuts, on a virtual clock. Each test
is a property a user sees; none needs root, and together they run in a few seconds."""
import pytest

from flatnet.engine import lighthouse_client as lc
from flatnet.engine.proto import liveness
from flatnet.engine.proto import revocation as rv
from tests.harness.simnet import LATENCY


def connected(a, b):
    return bool(b.received_from(a)) and bool(a.received_from(b))


def ping_until(sim, a, b, timeout, what, every=0.5):
    """a and b send to each other every `every` s until both received something."""
    def step():
        if not connected(a, b):
            a.send_to(b)
            b.send_to(a)
    end = sim.now + timeout
    while not connected(a, b):
        step()
        if sim.now >= end:
            raise AssertionError(f"not within {timeout:g} virtual s: {what}")
        sim.run_until(lambda: connected(a, b), min(every, end - sim.now))
    return sim.now


# Relay first (docs/lighthouse.md "Paths"): the first packets to a new peer go through
# the lighthouse's relay while the same handshakes go to its direct candidates. The
# first reply takes a few round trips (query, punch, handshake: ~10 hops of LATENCY).
FIRST_REPLY_WITHIN = 0.5


def is_direct(a, b):
    return a.path(b) == b.path(a) == "direct-punched"


def test_two_nodes_behind_cone_nats_end_up_direct_punched(make_sim):
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    assert a.subnet != b.subnet
    start = sim.now
    took = ping_until(sim, a, b, 2, "traffic both ways") - start
    assert took < FIRST_REPLY_WITHIN
    # the direct answer moves both to the punched path (no new handshake, the same session)
    sim.run_until(lambda: is_direct(a, b), lc.PROBE_DELAYS[-1] + 1, "both on the direct path")
    relayed = sim.lighthouses[0].registry.relayed
    sim.run(30)  # it stays direct: keepalives hold the NAT mappings open
    for _ in range(3):
        a.send_to(b)
        b.send_to(a)
    sim.run(1)
    assert is_direct(a, b) and len(b.received_from(a)) >= 4 and len(a.received_from(b)) >= 4
    assert sim.lighthouses[0].registry.relayed == relayed  # nothing went through the relay once direct


@pytest.mark.parametrize("nat_a", ["random", "cone"])
def test_behind_port_randomizing_nats_traffic_is_relayed_via_the_lighthouse(make_sim, nat_a):
    """A port-randomizing NAT on one side is enough: its punches leave from a new port
    the (port-restricted) cone on the other side never sent to."""
    sim = make_sim()
    a, b = sim.engine("host-a", nat=nat_a), sim.engine("host-b", nat="random")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    start = sim.now
    took = ping_until(sim, a, b, 2, "traffic both ways through the relay") - start
    lh = sim.lighthouses[0]
    assert a.path(b) == b.path(a) == f"relayed via {lh.addr[0]}:{lh.addr[1]}"
    assert lh.registry.relayed > 0 and took < FIRST_REPLY_WITHIN
    # the direct candidates are tried again (PROBE_DELAYS, then every DIRECT_RETRY s);
    # they still fail, traffic still flows
    sim.run(2 * lc.DIRECT_RETRY + 1)
    a.send_to(b)
    b.send_to(a)
    sim.run(1)
    assert len(b.received_from(a)) >= 2 and len(a.received_from(b)) >= 2
    assert a.path(b).startswith("relayed") and b.path(a).startswith("relayed")


def test_the_relay_fallback_handshakes_at_once(make_sim):
    """A direct path that dies goes to the relay when liveness declares it dead, and
    traffic flows again within about a second of that (measured: path moved 3.75 s,
    first packet through 4.02 s after the cut). Behind port-randomizing NATs the relay
    is used from the first handshake (test above), so the old wait for the pending
    handshake's backoff retry before the relayed one (up to HANDSHAKE_RETRY_MAX) is gone."""
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    ping_until(sim, a, b, 2, "traffic both ways")
    sim.run_until(lambda: is_direct(a, b), lc.PROBE_DELAYS[-1] + 1, "both on the direct path")
    lighthouse = sim.lighthouses[0].addr
    sim.router.drop_if = lambda packet, src, dst: lighthouse not in (src, dst)  # only the relay gets through
    cut_at = sim.now
    got = len(b.received_from(a))
    end = cut_at + a.device.dead_after + 2
    while len(b.received_from(a)) <= got:
        assert sim.now < end, "a's traffic did not reach b through the relay in time"
        a.send_to(b)
        sim.run_until(lambda: len(b.received_from(a)) > got, 0.25)
    assert sim.now - cut_at < a.device.dead_after + 1.5 and a.path(b).startswith("relayed")


def test_fifty_nodes_get_distinct_subnets_and_every_pair_reaches_the_other(make_sim):
    sim = make_sim()
    nodes = [sim.engine(f"host-{i:02d}", nat=("cone", None)[i % 2]) for i in range(50)]
    sim.run_until(lambda: sim.registered(*nodes), 5, "50 hosts hold a lease")
    subnets = {n.subnet for n in nodes}
    assert len(subnets) == 50 and all(s.subnet_of(sim.network) and s.prefixlen == 24 for s in subnets)
    # every host sends to every other one it has not heard from, every QUERY_TIMEOUT s:
    # the lighthouse's rate limits refuse part of the 2450 queries and punches at first;
    # what is held waits for keys, the rest is asked again
    missing = {(n, o) for n in nodes for o in nodes if n is not o}
    for _ in range(4):
        for n, o in sorted(missing, key=lambda pair: (pair[0].name, pair[1].name)):
            n.send_to(o)
        sim.run(lc.QUERY_TIMEOUT + 0.1)
        missing = {(n, o) for n, o in missing if not o.received_from(n)}
        if not missing:
            break
    assert not missing, f"{len(missing)} pairs cannot reach each other, e.g. {min((n.name, o.name) for n, o in missing)}"
    assert sim.lighthouses[0].registry.limited["queries"] > 0  # the limits were hit, and it still converged
    assert all(n.device.peers[o.name].subnet == o.subnet for n in nodes for o in nodes if n is not o)


@pytest.mark.parametrize("offset", [0.0, 0.01, 4.3, 8.99, 9.0, 9.995])
def test_after_a_lighthouse_restart_everyone_registers_again_with_the_same_subnet(make_sim, offset):
    """At any moment of the register cycle (REGISTER_EVERY = 10 s), also just before,
    at and just after a register goes out."""
    sim = make_sim()
    nodes = [sim.engine(f"host-{i}", nat=("cone", "random")[i % 2]) for i in range(6)]
    sim.run_until(lambda: sim.registered(*nodes), 3, "all hold a lease")
    before = {n.name: n.subnet for n in nodes}
    lh = sim.lighthouses[0]
    sim.run(offset)
    lh.restart()  # sessions and the online list are gone; the lease database stays
    assert not lh.registry.nodes
    limit = lc.REGISTER_EVERY + lc.ANSWER_WITHIN + lc.REGISTER_RETRY + 1
    sim.run_until(lambda: len(lh.registry.nodes) == len(nodes), limit, "every node registered again")
    assert {n.name: n.subnet for n in nodes} == before
    assert {name: lh.registry.nodes[name].subnet for name in before} == before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thirty_percent_loss_still_converges(make_sim, seed):
    sim = make_sim(seed=seed, loss=0.3)
    a, b, c = (sim.engine(f"host-{x}", nat="cone") for x in "abc")
    sim.run_until(lambda: sim.registered(a, b, c), 20, "three hosts hold a lease despite loss")
    ping_until(sim, a, b, 30, "traffic both ways despite loss")
    ping_until(sim, b, c, 30, "traffic both ways despite loss")
    assert sim.router.lost > 0


def test_a_lost_punch_handshake_is_retried(make_sim):
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    lighthouse = sim.lighthouses[0].addr
    dropped = []

    def drop_first_punches(packet, src, dst):
        if packet[0] == 1 and dst != lighthouse and len(dropped) < 4:  # the first handshakes between the hosts
            dropped.append(dst)
            return True
        return False
    sim.router.drop_if = drop_first_punches
    start = sim.now
    took = ping_until(sim, a, b, 2, "traffic both ways") - start
    assert took < FIRST_REPLY_WITHIN  # through the relay meanwhile
    sim.run_until(lambda: len(dropped) == 4 and is_direct(a, b), lc.PROBE_DELAYS[-1] + 1,
                  "the direct probes after the lost handshakes punch through")


def test_a_lost_punch_message_falls_back_to_the_relay(make_sim):
    """The lighthouse's `punch` to b is lost: b never opens its NAT toward a, so a's
    direct handshakes are filtered; the one through the relay reaches b at once."""
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    lighthouse = sim.lighthouses[0].addr
    nat_b = sim.router.nats[2].public_ip
    lost = []

    def drop_control_to_b(packet, src, dst):
        if src == lighthouse and dst[0] == nat_b and packet[0] == 4 and not lost:
            lost.append(packet)  # the punch (b's register answers are not due for 10 s)
            return True
        return False
    sim.router.drop_if = drop_control_to_b
    a.send_to(b)
    sim.run_until(lambda: b.received_from(a), FIRST_REPLY_WITHIN, "a reaches b")
    assert lost and a.path(b).startswith("relayed")


def test_a_peer_cut_off_becomes_unreachable_and_recovers(make_sim):
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    ping_until(sim, a, b, 2, "traffic both ways")
    peer = a.device.peers["host-b"]
    sim.router.cut.add(b.addr[0])
    cut_at = sim.now

    def a_keeps_sending_until(done, timeout, what):
        end = sim.now + timeout
        while not done():
            assert sim.now < end, f"not within {timeout:g} virtual s: {what}"
            a.send_to(b)
            sim.run_until(done, 0.5)
    a_keeps_sending_until(lambda: peer.live.state is liveness.PathState.UNREACHABLE, 2 * a.device.dead_after + 1,
                          "a sees b unreachable")
    assert sim.now - cut_at >= a.device.dead_after
    assert "event=peer_unreachable" in a.out.getvalue()
    assert next(r for r in a.device.peer_table(sim.now) if r["name"] == "host-b")["state"] == "unreachable"
    sim.router.cut.discard(b.addr[0])
    got = len(b.received_from(a))
    a_keeps_sending_until(lambda: len(b.received_from(a)) > got and peer.live.state is liveness.PathState.UP,
                          lc.DIRECT_RETRY + 5, "b reachable again and a's traffic arriving")
    assert "event=peer_reachable" in a.out.getvalue()


def test_a_revoked_node_is_torn_down_everywhere(make_sim):
    sim = make_sim()
    nodes = {x: sim.engine(f"host-{x}", nat="cone") for x in "abc"}
    a, b, c = nodes.values()
    sim.run_until(lambda: sim.registered(a, b, c), 3, "all hold a lease")
    ping_until(sim, a, c, 2, "a and c talk")
    ping_until(sim, b, c, 2, "b and c talk")
    raw = rv.create(sim.ca.key, sim.ca.cert, 1, int(sim.wall()), {"host-c": int(sim.wall())}, [])
    lh = sim.lighthouses[0]
    lh.publish_blocklist(raw)
    sim.run_until(lambda: "host-c" not in a.device.peers and "host-c" not in b.device.peers, 2,
                  "the blocklist reached a and b and they dropped c")
    assert "host-c" not in lh.device.peers and "host-c" not in lh.registry.nodes
    assert set(a.device.revoked) == set(b.device.revoked) == {"host-c"}
    # c keeps trying: nobody lets it back in, and its traffic goes nowhere
    heard = len(a.received_from(c))
    for _ in range(10):
        c.send_to(a)
        sim.run(1)
    assert len(a.received_from(c)) == heard and "host-c" not in a.device.peers
    assert a.device.errors["revoked_cert"] > 0
    # the others are not affected
    got = len(b.received_from(a))
    a.send_to(b)
    sim.run(10 * LATENCY)
    assert len(b.received_from(a)) == got + 1


def test_a_node_reached_first_by_a_handshake_learns_its_subnet_despite_a_lost_answer(make_sim):
    """a asks the lighthouse who b is again (LOOKUP_RETRY, doubling) until it knows b's
    subnet; it once asked only once, and b's traffic was dropped for good."""
    sim = make_sim()
    a, b = sim.engine("host-a", nat=None), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    lighthouse = sim.lighthouses[0].addr
    lost = []

    def drop_two_messages_to_a(packet, src, dst):
        if src == lighthouse and dst == a.addr and packet[0] == 4 and len(lost) < 2:
            lost.append(packet)  # the punch for b, then the answer to a's own query for b
            return True
        return False
    sim.router.drop_if = drop_two_messages_to_a
    for _ in range(20):
        b.send_to(a)
        sim.run(1)
        if a.received_from(b):
            break
    assert len(lost) == 2
    assert a.device.peers["host-b"].subnet == b.subnet and a.received_from(b)


def test_a_node_offline_for_three_ttls_is_forgotten_and_comes_back_with_its_subnet(make_sim):
    """Minutes of silence (3 x ttl = 180 s) that a namespace test cannot afford: the
    lighthouse forgets the node (no query finds it), its /24 stays its own."""
    sim = make_sim()
    a, b = sim.engine("host-a", nat="cone"), sim.engine("host-b", nat="cone")
    sim.run_until(lambda: sim.registered(a, b), 3, "both hosts hold a lease")
    lh = sim.lighthouses[0]
    subnet = b.subnet
    sim.router.cut.add(b.addr[0])
    sim.run(2 * lh.ttl)
    assert "host-b" in lh.registry.nodes  # 2 x ttl: still online as far as the lighthouse knows
    sim.run_until(lambda: "host-b" not in lh.registry.nodes, 1.5 * lh.ttl, "the lighthouse forgot host-b")
    assert sim.now >= 3 * lh.ttl
    a.send_to(b)  # nobody owns that /24 now: the query is answered "unknown"
    sim.run(1)
    assert not b.received_from(a) and "host-b" not in a.device.peers
    assert "event=lighthouse_error" in a.out.getvalue() and "code=unknown" in a.out.getvalue()
    sim.router.cut.discard(b.addr[0])
    sim.run_until(lambda: "host-b" in lh.registry.nodes, lc.REGISTER_EVERY + lc.ANSWER_WITHIN + 2,
                  "host-b registered again")
    assert b.subnet == subnet and lh.registry.nodes["host-b"].subnet == subnet
    ping_until(sim, a, b, lc.QUERY_TIMEOUT + 2, "a and b talk again")
