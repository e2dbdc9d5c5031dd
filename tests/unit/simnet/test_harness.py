"""The simulation itself: its NATs behave as the kinds they name, and the fake data
path refuses what the C one refuses (so a passing simnet test is not a fake's gift)."""
import ipaddress
import random

from flatnet.engine.datapath_port import CTRL_DECRYPTED, CTRL_RAW, CTRL_ROAM
from tests.harness.fakedp import FakeDataPath, ipv4
from tests.harness.simnet import Nat

IN, X, Y = ("10.1.0.2", 4787), ("203.0.113.1", 4787), ("203.0.113.2", 4787)


def test_a_cone_nat_keeps_one_port_and_admits_only_whom_it_sent_to():
    nat = Nat("198.51.100.1", "cone", random.Random(1))
    to_x, to_y = nat.outbound(IN, X), nat.outbound(IN, Y)
    assert to_x == to_y
    assert nat.inbound(to_x[1], X) == IN and nat.inbound(to_x[1], ("203.0.113.3", 4787)) is None


def test_a_port_randomizing_nat_takes_a_new_port_per_destination():
    nat = Nat("198.51.100.1", "random", random.Random(1))
    to_x, to_y = nat.outbound(IN, X), nat.outbound(IN, Y)
    assert to_x != to_y and nat.outbound(IN, X) == to_x
    assert nat.inbound(to_x[1], X) == IN and nat.inbound(to_x[1], Y) is None


def pair():
    key_ab, key_ba = bytes(range(32)), bytes(range(1, 33))
    a, b = FakeDataPath(), FakeDataPath()
    a.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    b.set_peer(1, ipaddress.IPv4Network("10.87.1.0/24"))
    a.set_endpoint(1, X)
    b.set_endpoint(1, IN)
    a.set_tx_key(1, key_ab, 7)           # a: initiator, sends at once
    b.add_rx(7, 1, key_ab)
    b.stage_tx_key(1, key_ba, 9, 7)      # b: responder, sends once a packet came under index 7
    a.add_rx(9, 1, key_ba)
    return a, b


def test_control_packets_open_once_and_tampering_is_refused():
    a, b = pair()
    assert b.seal_control(1, b"early") is None  # the staged key is not in use yet
    packet = a.seal_control(1, b"hello")
    [item] = b.receive(packet, IN)
    assert (item.kind, item.data) == (CTRL_DECRYPTED, b"hello")
    assert b.receive(packet, IN) == [] and b.drops["replay"] == 1
    bad = bytearray(a.seal_control(1, b"hello"))
    bad[-1] ^= 1
    assert b.receive(bytes(bad), IN) == [] and b.drops["auth_failed"] == 1
    assert b.seal_control(1, b"now") is not None  # confirmed by a's packet: the staged key went into use


def test_a_packet_from_a_new_address_is_a_roam_note_and_data_is_checked_by_source():
    a, b = pair()
    kinds = [i.kind for i in b.receive(a.seal_control(1, b"x"), ("198.51.100.9", 5000))]
    assert kinds == [CTRL_ROAM, CTRL_DECRYPTED]
    sent = []
    a.send = lambda packet, addr: sent.append(packet)
    assert a.send_ip(ipv4("10.87.1.1", "10.87.2.1", b"ok")) and b.receive(sent[-1], IN) == []
    assert b.delivered[-1][1].endswith(b"ok")
    a.send_ip(ipv4("10.87.9.1", "10.87.2.1", b"spoof"))  # a source outside a's subnet
    assert b.receive(sent[-1], IN) == [] and b.drops["source_not_allowed"] == 1


def test_handshakes_go_up_raw_and_a_relayed_one_keeps_its_wrapping():
    _, b = pair()
    init = bytes([1, 2, 0, 0]) + bytes(100)
    assert [i.kind for i in b.receive(init, X)] == [CTRL_RAW]
    relayed = bytes([5, 2, 0, 0, 3, 0, 0, 0]) + init
    [item] = b.receive(relayed, X)
    assert item.kind == CTRL_RAW and item.data == relayed
