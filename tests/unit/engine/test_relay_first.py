"""Relay first, direct as soon as it answers (issue 18): a real Device and
LighthouseClient on a virtual clock, over a fake wire.

- a peer the lighthouse introduces is sent to through the relay from the first
  initiation, and the same initiation goes to its direct candidates;
- a peer relayed later (no relay was registered yet, or its direct path died) gets
  an initiation through the relay at that moment, also while one is out: before the
  fix the relay waited for the handshake's next retry (4 s later), and the first
  reply took 7.0 s in 4 of 13 runs behind port-randomizing NATs;
- a direct probe of a relayed peer with keys is a keepalive under the session, not a
  new handshake; the peer that gets it moves to the direct path and answers at once.
"""
import ipaddress
import itertools
import struct
from types import SimpleNamespace

from flatnet.engine.datapath_port import CTRL_ROAM, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.lighthouse_client import PROBE_DELAYS, RELAY_AFTER, LighthouseClient
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import TYPE_INITIATION, TYPE_RELAYED
from flatnet.engine.proto import control as wire
from tests.harness.pki import TestCA

NET = ipaddress.IPv4Network("10.87.0.0/16")
LH_ADDR, B_ADDR = ("192.0.2.254", 4787), ("203.0.113.9", 40000)


class FakeDataPath:
    def __init__(self):
        self.endpoint, self.relay, self.keys = {}, {}, set()

    def __getattr__(self, name):
        return lambda *args: None

    def set_endpoint(self, slot, addr):
        self.endpoint[slot] = addr

    def set_relay(self, slot, relay_id):
        self.relay[slot] = relay_id

    def seal_control(self, slot, payload):
        return b"\x04sealed" + payload if slot in self.keys else None

    def stats(self, slot):
        return SimpleNamespace(last_tx=None, last_rx=None)


def setup(leased=True):
    ca = TestCA()
    tick = itertools.count(1)
    wire_out = []
    me = ca.identity("host-a")
    dev = Device(me, FakeDataPath(), lambda p, addr: wire_out.append((p, addr)),
                 lambda: ca.now * 10**9 + next(tick) * 1000, Logger("t", stream=open("/dev/null", "w")),
                 accept_any=True)
    lh = dev.add_peer(ca.identity("lighthouse").cert, None, [LH_ADDR])
    dev.dp.keys.add(lh.slot)  # a session with the lighthouse
    client = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")), lambda s: None)
    if leased:
        lease(client, lh, 0.0)
    wire_out.clear()
    return ca, dev, lh, client, wire_out


def lease(client, lh, now, relay=True):
    client.on_message(lh, wire.encode("lease", subnet="10.87.3.0/24", network=str(NET), observed=("198.51.100.1", 1),
                                      ttl=60, relay=relay), LH_ADDR, now)


def introduce(ca, client, lh, now):
    b = ca.identity("host-b")
    client.on_message(lh, wire.encode("peer", name="host-b", cert=b.cert.raw, subnet="10.87.7.0/24",
                                      endpoints=[B_ADDR], local=[]), LH_ADDR, now)
    return client.device.peers["host-b"]


def initiations(wire_out):
    """(through the relay?, destination) of every initiation sent."""
    out = []
    for p, addr in wire_out:
        if p[0] == TYPE_RELAYED and p[8] == TYPE_INITIATION:
            out.append(("relay", addr, struct.unpack_from("<I", p, 4)[0]))
        elif p[0] == TYPE_INITIATION:
            out.append(("direct", addr, None))
    return out


def test_a_new_peer_is_relayed_from_the_first_initiation_which_also_goes_direct():
    ca, dev, lh, client, wire_out = setup()
    peer = introduce(ca, client, lh, 1.0)
    assert peer.relay == (LH_ADDR, 7) and "relay first" in peer.path_reason
    assert sorted(initiations(wire_out)) == [("direct", B_ADDR, None), ("relay", LH_ADDR, 7)]
    # both copies are one initiation: the responder takes the first, the other is a replay to it
    relayed = next(p for p, a in wire_out if p[0] == TYPE_RELAYED)
    direct = next(p for p, a in wire_out if p[0] == TYPE_INITIATION)
    assert relayed[8:] == direct
    # still relayed after RELAY_AFTER: the reason says why
    client.handle_timer(1.0 + RELAY_AFTER)
    assert "port-randomizing" in peer.path_reason


def test_no_relay_first_when_the_lighthouse_does_not_relay_or_is_turned_off():
    ca, dev, lh, client, wire_out = setup(leased=False)
    lease(client, lh, 0.0, relay=False)
    peer = introduce(ca, client, lh, 1.0)
    assert peer.relay is None and initiations(wire_out) == [("direct", B_ADDR, None)]
    ca, dev, lh, client, wire_out = setup()
    client.no_relay = {"lighthouse"}
    peer = introduce(ca, client, lh, 1.0)
    assert peer.relay is None and client.relays() == []


def test_relaying_later_sends_an_initiation_through_the_relay_at_once_even_while_one_is_out():
    """The 7.0 s first reply: at RELAY_AFTER the handshake's retry (1, then 2 s: due at
    3 s) had just gone out directly; the relay switch only asked for a handshake if
    none was out, so the next initiation through the relay left at 7 s."""
    ca, dev, lh, client, wire_out = setup(leased=False)
    client.handle_timer(0.0)  # the register goes out; no lease yet: no relay known
    peer = introduce(ca, client, lh, 0.0)
    assert peer.relay is None
    lease(client, lh, 2.0)
    for t in (1.0, 2.0, 3.0):
        dev.handle_timer(t)  # the session's retries (at 1 s and 3 s), direct
        client.handle_timer(t)
    assert peer.relay is not None
    at3 = [i for i in initiations(wire_out)]
    assert ("relay", LH_ADDR, 7) in at3, "no initiation went through the relay when the peer was relayed"


def test_a_direct_probe_is_a_keepalive_under_the_session_and_the_peer_moves_and_answers():
    ca, dev, lh, client, wire_out = setup()
    peer = introduce(ca, client, lh, 1.0)
    peer.session.current = object()  # keys made through the relay
    dev.dp.keys.add(peer.slot)
    wire_out.clear()
    handshakes = peer.session.handshakes
    client.handle_timer(1.0 + PROBE_DELAYS[0])
    to_b = [(p, a) for p, a in wire_out if a != LH_ADDR]  # (the register to the lighthouse is due too)
    assert to_b == [(b"\x04sealed", B_ADDR)] and peer.session.handshakes == handshakes
    assert peer.relay is not None  # nothing moves before an authenticated answer
    wire_out.clear()
    # the C data path authenticated a packet of the peer from its direct address
    dev.on_control([ControlItem(CTRL_ROAM, peer.slot, b"", B_ADDR)], 2.0)
    assert peer.relay is None and peer.endpoint == B_ADDR and dev.dp.relay[peer.slot] is None
    assert wire_out == [(b"\x04sealed", B_ADDR)]  # answered on the direct path at once


def test_udp_blocked_the_tcp_relay_is_used_and_left_when_udp_answers():
    from flatnet.engine.lighthouse_client import TCP_AFTER, UDP_PROBE
    ca = TestCA()
    tick = itertools.count(1)
    wire_out = []
    dev = Device(ca.identity("host-a"), FakeDataPath(), lambda p, addr: wire_out.append((p, addr)),
                 lambda: ca.now * 10**9 + next(tick) * 1000, Logger("t", stream=open("/dev/null", "w")),
                 accept_any=True)
    lh = dev.add_peer(ca.identity("lighthouse").cert, None, [LH_ADDR])
    client = LighthouseClient(dev, [lh], NET, lambda: [], Logger("t", stream=open("/dev/null", "w")),
                              lambda s: None, tcp_ports={"lighthouse": 443})
    opened, closed = [], []
    client.open_tcp = lambda name, server: opened.append((name, server))
    client.close_tcp = closed.append
    client.handle_timer(0.0)
    client.handle_timer(TCP_AFTER - 0.1)
    assert not opened
    client.handle_timer(TCP_AFTER)
    assert opened == [("lighthouse", ("192.0.2.254", 443))]
    shim = ("127.0.0.1", 50000)
    client.tcp_up("lighthouse", shim, "192.0.2.254:443", TCP_AFTER + 0.1)
    assert lh.endpoint == shim and shim in lh.endpoints
    dev.dp.keys.add(lh.slot)
    lease(client, lh, TCP_AFTER + 0.5)
    peer = introduce(ca, client, lh, TCP_AFTER + 1)
    assert peer.relay == (shim, 7)
    assert dev.path_of(peer) == "relayed over TCP via 192.0.2.254:443: UDP blocked"
    # UDP probes: a register under the session to the configured address, every UDP_PROBE
    wire_out.clear()
    client.handle_timer(TCP_AFTER + 0.1 + UDP_PROBE)
    registers = [a for p, a in wire_out if p.startswith(b"\x04sealed") and b"register" in p]
    assert registers.count(LH_ADDR) == 2  # the probe, and the regular register goes to every candidate
    # the lease came back over UDP: the data path moved the lighthouse (an authenticated roam)
    dev.on_control([ControlItem(CTRL_ROAM, lh.slot, b"", LH_ADDR)], 9.0)
    client.handle_timer(9.0)
    assert closed == ["lighthouse"]
    client.tcp_closed("lighthouse", "UDP works again", 9.1)
    assert peer.relay == (LH_ADDR, 7) and client.next_probe["host-b"] == 9.1 and not dev.tcp_labels
    assert lh.endpoint == LH_ADDR and lh.endpoints == [LH_ADDR]
