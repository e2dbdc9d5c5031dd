"""Issue 13 item 1: nothing moves a peer's path (endpoint, relay) before the packet
asking for it is authenticated and fresh, and a relay is taken only from a configured
lighthouse or a node certified with the group "relay".

Two Devices (a = the victim, b = its peer) over a fake wire, with a data path that
records what the control plane pushes into it (tests/harness/fakedp.py). The attacks:
- an old initiation of b, wrapped in a type-5 header, sent from the attacker's own
  address, or bounced through the lighthouse (any registered node can make the
  lighthouse forward a type-5 packet to anyone);
- a fresh initiation of b relayed from an address that is no relay;
- a relayed data packet (a roam note from the C data path) from such an address;
- a roam to an address nobody should be sent to (loopback, link-local).
"""
import ipaddress
import itertools
import struct

import pytest

from flatnet.engine.datapath_port import CTRL_RAW, CTRL_ROAM, ControlItem
from flatnet.engine.device import DIRECT_HOLD, Device
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import TYPE_RELAYED
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import TestCA

A_ADDR, B_ADDR, LH_ADDR, C_ADDR = ("192.0.2.1", 4787), ("192.0.2.2", 4787), ("192.0.2.254", 4787), ("192.0.2.3", 4787)
ATTACKER = ("198.51.100.66", 6666)


class Net:
    def __init__(self):
        self.ca = TestCA()
        self.tick = itertools.count(1)
        ids = {n: self.ca.identity(n) for n in ("host-a", "host-b")}
        ids["lighthouse"] = self.ca.identity("lighthouse")
        ids["host-c"] = self.ca.identity("host-c", groups=["relay"])
        self.ids = ids
        self.wire: list[tuple[str, bytes, tuple]] = []
        quiet = Logger("t", stream=open("/dev/null", "w"))
        # every read of the wall clock is a little later: each initiation is fresh
        wall = lambda: self.ca.now * 10**9 + next(self.tick) * 1000  # noqa: E731
        self.a = Device(ids["host-a"], FakeDataPath(), lambda p, addr: self.wire.append(("a", p, addr)), wall, quiet)
        self.b = Device(ids["host-b"], FakeDataPath(), lambda p, addr: self.wire.append(("b", p, addr)), wall, quiet)
        self.a.relay_names.add("lighthouse")  # what LighthouseClient does for its lighthouses
        self.pb = self.a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"), [B_ADDR])
        self.a.add_peer(ids["lighthouse"].cert, None, [LH_ADDR])
        self.a.add_peer(ids["host-c"].cert, ipaddress.IPv4Network("10.87.3.0/24"), [C_ADDR])
        self.pa = self.b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [A_ADDR])

    def initiation_from_b(self, now=0.0) -> bytes:
        self.b.rehandshake(self.pa, now)
        init = next(p for src, p, _ in reversed(self.wire) if src == "b" and p[0] == 1)
        self.wire.clear()
        return init

    def to_a(self, packet, src, kind=CTRL_RAW, peer=-1, now=1.0):
        self.a.on_control([ControlItem(kind, peer, packet, src)], now)

    def a_state(self):
        pb, dp = self.pb, self.a.dp
        return (pb.endpoint, pb.relay, dp.endpoint.get(pb.slot), dp.relay.get(pb.slot),
                pb.session.current, pb.session.handshakes)


def relayed(packet: bytes, relay_id: int = 9) -> bytes:
    return struct.pack("<B3xI", TYPE_RELAYED, relay_id) + packet


@pytest.fixture
def net():
    n = Net()
    old = n.initiation_from_b()
    n.to_a(old, B_ADDR)  # a session over the direct path
    resp = next(p for src, p, _ in n.wire if src == "a" and p[0] == 2)
    n.b.on_control([ControlItem(CTRL_RAW, -1, resp, A_ADDR)], 0.5)  # b is done: it may start another
    assert n.pa.session.pending is None
    assert n.pb.session.current is not None and n.pb.endpoint == B_ADDR and n.pb.relay is None
    n.wire.clear()
    n.old = old
    return n


@pytest.mark.parametrize("src", [ATTACKER, LH_ADDR], ids=["from-attacker", "bounced-via-lighthouse"])
def test_a_replayed_initiation_wrapped_in_type_5_changes_nothing(net, src):
    before = net.a_state()
    net.to_a(relayed(net.old), src)
    assert net.a_state() == before
    assert not net.wire  # no response either: nothing is sent anywhere
    assert net.a.errors["relay_refused" if src == ATTACKER else "replayed_initiation"] == 1


def test_a_replayed_direct_initiation_from_another_address_changes_nothing(net):
    before = net.a_state()
    net.to_a(net.old, ATTACKER)
    assert net.a_state() == before and not net.wire
    assert net.a.errors["replayed_initiation"] == 1


def test_a_fresh_relayed_initiation_from_an_address_that_is_no_relay_is_refused(net):
    before = net.a_state()
    net.to_a(relayed(net.initiation_from_b()), ATTACKER)
    assert net.a_state() == before and not net.wire
    assert net.a.errors["relay_refused"] == 1


def test_a_fresh_relayed_initiation_via_the_lighthouse_moves_the_peer_to_the_relay(net):
    net.to_a(relayed(net.initiation_from_b(), 2), LH_ADDR, now=1.0 + DIRECT_HOLD)
    assert net.pb.relay == (LH_ADDR, 2) and net.a.dp.relay[net.pb.slot] == 2
    assert net.pb.session.handshakes == 2
    [(src, resp, addr)] = [w for w in net.wire if w[1][0] == TYPE_RELAYED]
    assert addr == LH_ADDR and resp[8] == 2  # the response goes back through the relay


def test_a_node_certified_as_relay_may_relay(net):
    net.to_a(relayed(net.initiation_from_b(), 2), C_ADDR, now=1.0 + DIRECT_HOLD)
    assert net.pb.relay == (C_ADDR, 2)


def test_a_relayed_copy_does_not_undo_a_direct_path_just_confirmed(net):
    """Relay first sends each initiation both ways; the copy through the relay may come
    after the direct one confirmed the direct path (at 1.0 in the fixture): it is
    answered, on the direct path, and the path stays direct."""
    net.to_a(relayed(net.initiation_from_b(), 2), LH_ADDR, now=1.0 + DIRECT_HOLD - 0.5)
    assert net.pb.relay is None and net.pb.endpoint == B_ADDR and net.pb.session.handshakes == 2
    assert [addr for _, p, addr in net.wire if p[0] == 2] == [B_ADDR]
    net.to_a(struct.pack("<I", 2), LH_ADDR, CTRL_ROAM, net.pb.slot, now=1.0 + DIRECT_HOLD - 0.4)  # relayed data
    assert net.pb.relay is None
    net.to_a(struct.pack("<I", 2), LH_ADDR, CTRL_ROAM, net.pb.slot, now=1.0 + DIRECT_HOLD)
    assert net.pb.relay == (LH_ADDR, 2)


def test_a_relayed_data_packet_from_an_address_that_is_no_relay_does_not_move_the_path(net):
    before = net.a_state()
    net.to_a(struct.pack("<I", 2), ATTACKER, CTRL_ROAM, net.pb.slot)
    assert net.a_state() == before and net.a.errors["relay_refused"] == 1
    net.to_a(struct.pack("<I", 2), LH_ADDR, CTRL_ROAM, net.pb.slot, now=1.0 + DIRECT_HOLD)
    assert net.pb.relay == (LH_ADDR, 2)


@pytest.mark.parametrize("addr", [("127.0.0.1", 22), ("169.254.169.254", 80), ("0.0.0.0", 1), ("224.0.0.1", 9),
                                  ("255.255.255.255", 9), ("::1", 22), ("fe80::1", 80), ("ff02::1", 9), ("::", 1),
                                  ("::ffff:127.0.0.1", 22), ("::ffff:169.254.169.254", 80)])
def test_a_roam_to_an_address_nobody_should_be_sent_to_is_refused(net, addr):
    before = net.a_state()
    net.to_a(b"", addr, CTRL_ROAM, net.pb.slot)
    assert net.a_state() == before and net.a.errors["endpoint_refused"] == 1
    net.to_a(b"", ("10.1.2.3", 4787), CTRL_ROAM, net.pb.slot)  # a private LAN address is fine
    assert net.pb.endpoint == ("10.1.2.3", 4787)
    net.to_a(b"", ("fd00::3", 4787), CTRL_ROAM, net.pb.slot)  # and an IPv6 unique-local one
    assert net.pb.endpoint == ("fd00::3", 4787)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([1, 2, 5]), st.binary(max_size=300), st.sampled_from([ATTACKER, LH_ADDR, B_ADDR]),
       st.integers(0, 2**32 - 1))
def test_any_handshake_or_relayed_packet_is_taken_or_a_counted_drop(net, kind, body, src, index):
    """Fuzz of what the data path hands up raw (types 1, 2, 5): a RemoteProtocolError
    counted in Device.errors, never another exception, and the path stays. A response
    under a receiver index that is waiting is tried too (the index is in the body)."""
    net.a.rehandshake(net.pb, 2.0)  # a's handshake is pending: responses reach consume_response
    waiting = next(iter(i for i, n in net.a.indexes.owner.items() if n == "host-b" and
                        i == net.pb.session.pending.local_index))
    packet = bytes([kind, 0, 0, 0]) + index.to_bytes(4, "little") + (
        waiting.to_bytes(4, "little") if kind == 2 else b"") + body
    if kind == 5:
        packet = packet[:8] + bytes([body[0] % 3 if body else 1, 0, 0, 0]) + body
    relay = (net.pb.relay, net.pb.endpoint)
    errors = sum(net.a.errors.values())
    net.to_a(packet, src, now=2.0)
    assert sum(net.a.errors.values()) == errors + 1
    assert (net.pb.relay, net.pb.endpoint) == relay


def test_a_new_node_whose_initiation_is_refused_as_stale_is_not_added():
    """accept_any (the lighthouse, or an engine with lighthouses): a certified node
    connecting by itself is added only once its initiation passed the time check."""
    from flatnet.engine.proto import cookie, handshake as hsm
    from flatnet.engine.proto.noise import public_key
    n = Net()
    n.a.accept_any = True
    stranger = n.ca.identity("host-d")
    # a time before 1970 is below the "nothing accepted yet" mark: refused like a replay
    a_key = public_key(n.ids["host-a"].static_private)
    _, stale = hsm.create_initiation(stranger, a_key, 5, -10**18)
    n.to_a(cookie.add_macs(stale, a_key, None)[0], ATTACKER)
    assert "host-d" not in n.a.peers and n.a.errors["replayed_initiation"] == 1
    _, fresh = hsm.create_initiation(stranger, a_key, 6, int(n.ca.now * 1e9))
    n.to_a(cookie.add_macs(fresh, a_key, None)[0], ("10.9.9.9", 4787))
    assert n.a.peers["host-d"].endpoint == ("10.9.9.9", 4787) and n.a.peers["host-d"].endpoints == [("10.9.9.9", 4787)]
