"""Device.send_messages: a lighthouse's answers go to the data path in one batch when
the peer's only address is its endpoint; relayed peers and peers with other candidate
endpoints take the general way (send_message), peers without keys are returned."""
import errno
import io

from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from tests.harness.pki import TestCA


class BatchDataPath:
    def __init__(self):
        self.batches = []
        self.codes = {}

    def __getattr__(self, name):
        return lambda *args: None

    def seal_control(self, slot, payload):
        return None if self.codes.get(slot) == -errno.ENOKEY else b"sealed:" + payload

    def send_controls(self, messages):
        self.batches.append(list(messages))
        return [self.codes.get(slot, 0) for slot, _ in messages]


def test_send_messages_batches_direct_peers_and_falls_back_for_the_rest():
    ca = TestCA()
    dp, wire = BatchDataPath(), []
    dev = Device(ca.identity("lh"), dp, lambda pkt, addr: wire.append((pkt, addr)), lambda: ca.now * 10**9,
                 Logger("t", stream=io.StringIO()))
    direct = dev.add_peer(ca.identity("n1").cert, None, [("192.0.2.1", 4787)])
    nokey = dev.add_peer(ca.identity("n2").cert, None, [("192.0.2.2", 4787)])
    many = dev.add_peer(ca.identity("n3").cert, None, [("192.0.2.3", 4787), ("198.51.100.3", 4787)])
    relayed = dev.add_peer(ca.identity("n4").cert, None, [("192.0.2.4", 4787)])
    dev.use_relay(relayed, ("203.0.113.9", 4787), 7, "test")
    moved = dev.add_peer(ca.identity("n5").cert, None, [("192.0.2.5", 4787)])
    dp.codes = {nokey.slot: -errno.ENOKEY, moved.slot: -errno.EDESTADDRREQ}
    failed = dev.send_messages([(direct, b"a"), (nokey, b"b"), (many, b"c"), (relayed, b"d"), (moved, b"e")])
    assert dp.batches == [[(direct.slot, b"a"), (nokey.slot, b"b"), (moved.slot, b"e")]]
    assert failed == [nokey]
    assert (b"sealed:c", ("192.0.2.3", 4787)) in wire and (b"sealed:c", ("198.51.100.3", 4787)) in wire
    assert any(pkt.endswith(b"sealed:d") and addr == ("203.0.113.9", 4787) for pkt, addr in wire)  # wrapped
    assert (b"sealed:e", ("192.0.2.5", 4787)) in wire  # refused by the batch: the general way
    assert dev.send_messages([]) == []


def test_an_answer_to_a_removed_peer_never_goes_to_the_node_that_took_its_slot():
    """Answers wait (Lighthouse._out) until the batch is flushed; when the peer they are
    for was removed meanwhile and its slot given to another node, they must not be
    sealed under that node's keys and sent to it (a lease or a punch meant for another)."""
    ca = TestCA()
    dp, wire = BatchDataPath(), []
    dev = Device(ca.identity("lh"), dp, lambda pkt, addr: wire.append((pkt, addr)), lambda: ca.now * 10**9,
                 Logger("t", stream=io.StringIO()))
    gone = dev.add_peer(ca.identity("n1").cert, None, [("192.0.2.1", 4787)])
    dev.remove_peer("n1")
    other = dev.add_peer(ca.identity("n2").cert, None, [("192.0.2.2", 4787)])
    assert other.slot == gone.slot
    failed = dev.send_messages([(gone, b"lease for n1"), (other, b"x")])
    assert dp.batches == [[(other.slot, b"x")]] and not wire
    assert failed == [gone]
