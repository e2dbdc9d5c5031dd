"""The engine's lighthouse client on a virtual clock, with a fake device."""
import collections
import random
import ipaddress
from types import SimpleNamespace

import msgpack
from hypothesis import given, settings, strategies as st

from flatnet.engine.lighthouse_client import (DIRECT_RETRY, PROBE_DELAYS, REGISTER_EVERY, REGISTER_JITTER, RELAY_AFTER,
                                              LighthouseClient)
from flatnet.engine.log import Logger
from flatnet.engine.proto import control as wire
from tests.harness.pki import TestCA

NET = ipaddress.IPv4Network("10.87.0.0/16")


class FakeSession:
    def __init__(self):
        self.current = None
        self.pending = None
        self.last_handshake = None


class FakeDevice:
    def __init__(self, ca):
        self.me = ca.identity("host-a")
        self.peers = {}
        self.sent = []          # (peer name, decoded message)
        self.connects = []
        self.relays = []
        self.probes = 0
        self.relay_names = set()
        self.errors = collections.Counter()
        self.dp = SimpleNamespace(route_unpend=lambda r: None)
        self.rng = None  # no register jitter: exact times (test_registers_spread_out sets one)

    def wall_ns(self):
        return int(TestCA().now * 1e9)

    def send_message(self, peer, data):
        if peer.keys:
            self.sent.append((peer.name, wire.decode(data)))
        return peer.keys

    def connect(self, peer, now):
        self.connects.append((peer.name, now))

    def rehandshake(self, peer, now):
        self.connects.append((peer.name, now))

    def probe_direct(self, peer, now):
        self.probes += 1

    def handshake_now(self, peer, now):
        self.connects.append((peer.name, now))

    def add_peer(self, cert, subnet, endpoints):
        p = SimpleNamespace(name=cert.name, cert=cert, subnet=subnet, endpoints=endpoints, endpoint=None, relay=None,
                            session=FakeSession(), keys=False, extra={})
        self.peers[cert.name] = p
        return p

    def set_subnet(self, peer, subnet):
        peer.subnet = subnet

    def set_endpoints(self, peer, endpoints):
        peer.endpoints = endpoints

    def use_relay(self, peer, addr, relay_id, reason):
        peer.relay = (addr, relay_id)
        self.relays.append((peer.name, addr, relay_id, reason))


def setup():
    ca = TestCA()
    dev = FakeDevice(ca)
    lh = SimpleNamespace(name="lh", endpoint=("192.0.2.254", 4787), endpoints=[("192.0.2.254", 4787)], keys=True, session=FakeSession(), relay=None)
    leases = []
    client = LighthouseClient(dev, [lh], NET, lambda: [("192.0.2.1", 4787)], Logger("t", stream=open("/dev/null", "w")),
                              leases.append)
    return ca, dev, lh, client, leases


def test_registers_until_leased_then_every_10s():
    ca, dev, lh, client, leases = setup()
    client.handle_timer(0.0)
    assert dev.sent[-1][1][0] == "register"
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 0.5)
    assert leases == [ipaddress.IPv4Network("10.87.3.0/24")]
    client.handle_timer(1.0)  # leased and every lighthouse answered: from now on every 10 s
    assert client.next_register == 1.0 + REGISTER_EVERY


def test_registers_spread_out_after_a_common_start():
    """Engines that registered in the same second (a lighthouse restart re-registers
    everyone within 2 s) must not keep registering in the same second for good."""
    starts = []
    for seed in range(20):
        ca, dev, lh, client, leases = setup()
        dev.rng = random.Random(seed)
        client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET),
                                          observed=("198.51.100.1", 1), ttl=60), ("192.0.2.254", 4787), 0.0)
        t = 1.0
        for _ in range(5):  # five rounds, each answered at once
            client.handle_timer(t)
            client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET),
                                              observed=("198.51.100.1", 1), ttl=60), ("192.0.2.254", 4787), t)
            assert t + REGISTER_EVERY - REGISTER_JITTER <= client.next_register <= t + REGISTER_EVERY
            t = client.next_register
        starts.append(t)
    assert max(starts) - min(starts) > 2 * REGISTER_JITTER  # no longer one second for all 20


def test_a_new_peer_goes_through_the_relay_at_once_and_is_probed_directly():
    ca, dev, lh, client, leases = setup()
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 0.0)
    b = ca.identity("host-b")
    client.on_message(lh, wire.encode("peer", name="host-b", cert=b.cert.raw, subnet="10.87.7.0/24",
                                      endpoints=[("203.0.113.9", 40000)], local=[("172.16.2.2", 4787)]),
                      ("192.0.2.254", 4787), 1.0)
    assert ("host-b", 1.0) in dev.connects
    [(name, addr, relay_id, reason)] = dev.relays
    assert name == "host-b" and addr == ("192.0.2.254", 4787) and relay_id == 7
    assert reason == "relay first, while 1 direct endpoint is tried"
    assert client.next_probe["host-b"] == 1.0 + PROBE_DELAYS[0]
    client.handle_timer(1.0 + RELAY_AFTER)
    assert "no answer from 1 direct endpoint in 3 s" in dev.peers["host-b"].path_reason


def test_without_a_registered_relay_the_peer_is_relayed_after_relay_after():
    ca, dev, lh, client, leases = setup()
    b = ca.identity("host-b")
    client.on_message(lh, wire.encode("peer", name="host-b", cert=b.cert.raw, subnet="10.87.7.0/24",
                                      endpoints=[("203.0.113.9", 40000)], local=[("172.16.2.2", 4787)]),
                      ("192.0.2.254", 4787), 1.0)
    assert not dev.relays
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 2.0)
    client.handle_timer(1.0 + RELAY_AFTER - 0.1)
    assert not dev.relays
    client.handle_timer(1.0 + RELAY_AFTER)
    [(name, addr, relay_id, reason)] = dev.relays
    assert "no answer from 1 direct endpoint in 3 s" in reason
    assert client.next_probe["host-b"] == 1.0 + RELAY_AFTER + PROBE_DELAYS[0]
    # then 1, 2, 4 s after the relay, then every DIRECT_RETRY
    t = 1.0 + RELAY_AFTER
    for delay in PROBE_DELAYS[1:] + (PROBE_DELAYS[-1] + DIRECT_RETRY,):
        client.handle_timer(client.next_probe["host-b"])
        assert client.next_probe["host-b"] == t + delay
    assert dev.probes == 4


def test_a_peer_message_for_ourselves_or_a_foreign_subnet_is_refused():
    ca, dev, lh, client, leases = setup()
    me = dev.me
    client.on_message(lh, wire.encode("peer", name="host-a", cert=me.cert.raw, subnet="10.87.1.0/24",
                                      endpoints=[], local=[]), ("192.0.2.254", 4787), 0.0)
    other = ca.identity("host-c")
    client.on_message(lh, wire.encode("peer", name="host-c", cert=other.cert.raw, subnet="10.99.1.0/24",
                                      endpoints=[], local=[]), ("192.0.2.254", 4787), 0.0)
    assert not dev.peers and client.errors == 2


def test_a_lease_outside_the_network_or_not_a_24_is_refused_and_changes_nothing():
    """A lighthouse (a bug, or one of another network signed by the same CA) leases a
    subnet outside our network, or not a /24: the engine must not give its TUN that
    address and route it (docs/protocol.md 10, `bad_control`); nothing of the lease is
    used, and a good lease afterwards is taken."""
    ca, dev, lh, client, leases = setup()
    client.handle_timer(0.0)
    for bad in ("10.99.3.0/24", "10.87.0.0/16", "10.87.3.0/25", "0.0.0.0/0"):
        client.on_message(lh, wire.encode("lease", subnet=bad, network=str(NET), observed=("198.51.100.1", 1),
                                          ttl=60, relays=["host-z"]), ("192.0.2.254", 4787), 0.5)
    assert leases == [] and client.subnet is None and client.errors == 4
    assert dev.errors["bad_control"] == 4
    assert not client.registered and client.observed is None and client.node_relays == []
    client.handle_timer(1.0)
    assert dev.sent[-1][1][0] == "register"  # still unleased: it keeps asking
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 1.5)
    assert leases == [ipaddress.IPv4Network("10.87.3.0/24")]


def test_a_direct_path_that_died_falls_back_to_the_relay_at_once():
    ca, dev, lh, client, leases = setup()
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 0.0)
    b = ca.identity("host-b")
    client.on_message(lh, wire.encode("peer", name="host-b", cert=b.cert.raw, subnet="10.87.7.0/24",
                                      endpoints=[("203.0.113.9", 40000)], local=[("172.16.2.2", 4787)]),
                      ("192.0.2.254", 4787), 1.0)
    peer = dev.peers["host-b"]
    peer.session.current = object()  # the direct path answered (relay first, then direct)
    peer.relay = None
    dev.relays.clear()
    client.handle_timer(2.0)
    assert not dev.relays and "host-b" not in client.next_probe
    client.on_path_dead(peer, 30.0)
    [(name, addr, relay_id, reason)] = dev.relays
    assert name == "host-b" and reason == "the direct path stopped answering"
    assert client.next_probe["host-b"] == 30.0 + PROBE_DELAYS[0]
    client.on_path_dead(peer, 31.0)  # already relayed: nothing more
    client.on_path_dead(lh, 31.0)    # a lighthouse is never relayed through itself
    assert len(dev.relays) == 1


def test_service_refusals_from_the_lighthouse_reach_the_services_api(tmp_path):
    """The lighthouse refuses a taken name per service (error service_refused, after the
    lease): the engine lists it with the reason and does not route it; a later lease
    without the refusal clears it."""
    from flatnet.engine.services import ServiceRegistry
    ca = TestCA()
    dev = FakeDevice(ca)
    lh = SimpleNamespace(name="lh", endpoint=("192.0.2.254", 4787), endpoints=[("192.0.2.254", 4787)], keys=True, session=FakeSession(), relay=None)
    reg = ServiceRegistry(str(tmp_path / "services.json"), "host-a", "office.lan")
    client = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                              lambda s: None, services=reg)
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 1.0)
    reg.publish(ipaddress.IPv4Network("10.87.3.0/24"), "wiki", "10.87.3.5", 80)
    reason = "service 'wiki': name 'wiki' is already published by node host-b"
    client.on_message(lh, wire.encode("error", code="service_refused", msg=reason, service="wiki"),
                      ("192.0.2.254", 4787), 1.1)
    assert reg.rejected() == [{"name": "wiki", "host": "", "source": "lighthouse lh", "reason": reason}]
    assert reg.routes(None)["routes"] == []
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 11.0)
    assert reg.rejected() == [] and len(reg.routes(None)["routes"]) == 2
    assert client.errors == 0


def test_lighthouses_may_relay():
    ca, dev, lh, client, leases = setup()
    assert dev.relay_names == {"lh"}


def test_a_punch_to_addresses_nobody_should_be_sent_to_is_not_followed():
    """issue 13 item 5, the engine's own check (an older or misbehaving lighthouse)."""
    ca, dev, lh, client, leases = setup()
    b = ca.identity("host-b")
    bad = [("127.0.0.1", 22), ("169.254.169.254", 80), ("0.0.0.0", 1), ("239.1.1.1", 9), ("255.255.255.255", 9)]
    client.on_message(lh, wire.encode("punch", name="host-b", cert=b.cert.raw, subnet="10.87.7.0/24",
                                      endpoints=bad + [("172.16.2.2", 4787)], local=bad[:2]),
                      ("192.0.2.254", 4787), 1.0)
    peer = dev.peers["host-b"]
    assert peer.endpoints == [("172.16.2.2", 4787)] and peer.own_endpoints == []
    assert dev.errors["endpoint_refused"] == len(bad) and ("host-b", 1.0) in dev.connects


def test_register_sends_at_most_max_local_usable_endpoints():
    ca, dev, lh, client, leases = setup()
    mine = [("169.254.1.1", 4787)] + [(f"10.0.{i}.1", 4787) for i in range(9)]
    client.local_endpoints = lambda: mine
    client.handle_timer(0.0)
    kind, msg = dev.sent[-1][1]
    assert kind == "register" and msg["endpoints"] == mine[1:1 + wire.MAX_LOCAL]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=1500),
                 st.builds(lambda kind, fields: msgpack.packb({"t": kind, "v": 1, **fields}, use_bin_type=True),
                           st.sampled_from(sorted(wire.SCHEMA)),
                           st.dictionaries(st.sampled_from(["subnet", "network", "observed", "ttl", "name", "cert",
                                                            "endpoints", "local", "services", "next", "code", "msg"]),
                                           st.one_of(st.none(), st.floats(), st.integers(-2**63, 2**64 - 1),
                                                     st.text(max_size=20), st.binary(max_size=40),
                                                     st.lists(st.one_of(st.text(max_size=15), st.integers(0, 70000)),
                                                              max_size=3)), max_size=8))))
def test_any_decrypted_control_message_is_handled_or_a_counted_drop(data):
    """Fuzz: whatever a lighthouse session delivers, the client handles it or counts
    it (errors); no exception reaches the device's receive loop."""
    ca, dev, lh, client, leases = setup()
    before = client.errors
    client.on_message(lh, data, ("192.0.2.254", 4787), 1.0)
    assert client.errors in (before, before + 1)


def test_a_catalog_gateway_nobody_should_be_sent_to_is_dropped():
    ca, dev, lh, client, leases = setup()
    client.services = SimpleNamespace(remote=[])
    client.services.set_remote = lambda entries: setattr(client.services, "remote", entries)
    entry = {"name": "web", "addr": "10.87.7.5", "port": 80, "node": "host-b"}
    client.on_message(lh, wire.encode("catalog", services=[dict(entry, gateway=("169.254.169.254", 80)),
                                                           dict(entry, name="api", gateway=("10.0.0.7", 80))], next=0),
                      ("192.0.2.254", 4787), 1.0)
    assert [s["gateway"] for s in client.services.remote] == [None, ("10.0.0.7", 80)]
    assert dev.errors["endpoint_refused"] == 1


def test_a_register_goes_out_the_moment_the_handshake_finishes():
    # before: the first register waited for the next 1 s tick after the keys came
    ca, dev, lh, client, leases = setup()
    lh.keys = False
    client.handle_timer(0.0)
    assert set(dev.connects) == {("lh", 0.0)} and not dev.sent
    lh.keys, lh.session.current, lh.session.last_handshake = True, object(), 0.05  # the response arrived
    assert client.get_timer() == 0.0
    client.handle_timer(0.05)
    assert [m[1][0] for m in dev.sent] == ["register"]
    assert client.get_timer() > 0.05  # once per handshake, not a busy loop


def test_a_lighthouse_that_stopped_answering_is_handshaken_every_second():
    # before: one rehandshake, then the session's backoff (1, 2, 4, 8 s): up to 7.6 s
    # passed between a lighthouse coming back and the engine registering again
    ca, dev, lh, client, leases = setup()
    client.handle_timer(0.0)
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60), ("192.0.2.254", 4787), 0.1)
    lh.session.current, lh.session.last_handshake = object(), 0.0
    client._registered_on["lh"] = 0.0
    client.handle_timer(REGISTER_EVERY)            # this register is never answered: the lighthouse restarted
    dev.connects.clear()
    lh.session.pending = object()
    t = REGISTER_EVERY
    while t < REGISTER_EVERY + 12:
        t += 0.25
        client.handle_timer(t)
    times = [at for name, at in dev.connects]
    assert len(times) >= 8 and max(b - a for a, b in zip(times, times[1:])) <= 1.01
    # it answers (new keys): the register goes out at once
    lh.session.last_handshake = t + 0.1
    client.handle_timer(t + 0.1)
    assert dev.sent[-1][1][0] == "register" and client.awaiting["lh"] == t + 0.1


def two_lighthouses():
    ca = TestCA()
    dev = FakeDevice(ca)
    lhs = [SimpleNamespace(name=n, endpoint=("192.0.2.25" + n[-1], 4787), keys=True, session=FakeSession(), relay=None)
           for n in ("lh1", "lh2")]
    client = LighthouseClient(dev, lhs, NET, lambda: [], Logger("t", stream=open("/dev/null", "w")), lambda s: None)
    client.handle_timer(0.0)
    for lh in lhs:
        client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                          ttl=60), (lh.endpoint[0], 4787), 0.1)
    dev.sent.clear()
    return ca, dev, lhs, client


def queries(dev):
    return [(to, msg["addr"]) for to, (kind, msg) in dev.sent if kind == "query"]


def test_queries_are_spread_over_the_lighthouses_one_each():
    # before: every query went to every lighthouse (and each of them punched the target)
    ca, dev, lhs, client = two_lighthouses()
    for i in range(4):
        client.on_unknown_route((87 << 8) + 10 + i, 1.0)
    sent = queries(dev)
    assert len(sent) == 4 and {to for to, _ in sent} == {"lh1", "lh2"}


def test_an_unanswered_query_goes_to_the_next_lighthouse():
    ca, dev, lhs, client = two_lighthouses()
    client.on_unknown_route((87 << 8) + 10, 1.0)
    (first, addr), = queries(dev)
    client.handle_timer(1.4)
    assert len(queries(dev)) == 1
    client.handle_timer(1.5)  # no answer within QUERY_FAILOVER: the other one
    assert [to for to, _ in queries(dev)] == [first, ({"lh1", "lh2"} - {first}).pop()]
    client.handle_timer(3.0)  # both asked: nothing more until the query times out
    assert len(queries(dev)) == 2
    client.handle_timer(6.2)  # timed out: forgotten (a packet asks again)
    assert client.queries == {}
    # an answer ends a query
    b = ca.identity("host-b")
    client.on_unknown_route((87 << 8) + 11, 6.5)
    client.on_message(lhs[0], wire.peer_message("peer", "host-b", b.cert.raw, "10.87.11.0/24", [("192.0.2.9", 4787)], []),
                      ("192.0.2.251", 4787), 6.6)
    assert client.queries == {}
