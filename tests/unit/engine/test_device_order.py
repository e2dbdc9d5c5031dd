"""Two engines' Devices over a fake wire, each with a data path that records calls.
The responder's receive key is in its data path before its response leaves, so the
initiator's held packets (sent the moment the response arrives) are not dropped as
`unknown_index`; the responder's send key is only staged (used once the initiator's
first packet arrives), also before the response leaves, and the initiator sends a
keepalive at once to confirm. Both were
seen losing the first datagram in the first-packet integration test, the second when
both hosts handshook at the same time."""
import ipaddress

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import TYPE_DATA, TYPE_RESPONSE
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import TestCA


def test_the_responder_installs_its_receive_key_before_its_response_leaves():
    ca = TestCA()
    ids = {n: ca.identity(n) for n in ("host-a", "host-b")}
    log = []
    wire = []
    quiet = Logger("t", stream=open("/dev/null", "w"))
    devs = {n: Device(ids[n], FakeDataPath(calls=log), lambda pkt, addr, n=n: (log.append(f"send:{n}"),
                                                                              wire.append((n, pkt))),
                      lambda: ca.now * 10**9, quiet) for n in ids}
    a, b = devs["host-a"], devs["host-b"]
    pa = a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"), [("192.0.2.2", 4787)])
    b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [("192.0.2.1", 4787)])
    a.connect(pa, 0.0)
    src, init = wire.pop()
    assert src == "host-a"
    del log[:]
    b.on_control([ControlItem(CTRL_RAW, -1, init, ("192.0.2.1", 4787))], 0.1)
    assert "send:host-b" in log and "add_rx" in log
    assert log.index("add_rx") < log.index("stage_tx_key") < log.index("send:host-b"), log
    assert "set_tx_key" not in log  # the responder does not send with the new keys yet

    # the initiator: receive key, send key, then a keepalive that confirms the keys
    src, resp = wire.pop()
    assert src == "host-b"
    del log[:]
    a.on_control([ControlItem(CTRL_RAW, -1, resp, ("192.0.2.2", 4787))], 0.2)
    assert log.index("add_rx") < log.index("set_tx_key") < log.index("seal_control") < log.index("send:host-a"), log
    assert wire[-1][0] == "host-a" and wire[-1][1][0] == TYPE_DATA and len(wire[-1][1]) == 32  # a keepalive
    # and it opens under the responder's receive key, which puts the staged send key in use
    assert not devs["host-b"].dp.stats(1).has_keys
    devs["host-b"].dp.receive(wire[-1][1], ("192.0.2.1", 4787))
    assert devs["host-b"].dp.stats(1).has_keys


def test_the_initiators_first_packet_confirms_even_when_it_comes_at_once():
    """The initiator's keepalive (and data) can reach the responder's data path while the
    responder is still sending its response. The clean-room peer (tests/cleanroom) did
    this: its confirming keepalive and an ICMP echo request came before the engine had
    staged its send key, so nothing confirmed it, and the echo reply was held until the
    engine's own next handshake (1.1 s later, or dropped after 3 s). Here the wire
    delivers synchronously: the response reaches the initiator, and its keepalive
    reaches the responder's data path, inside the responder's send call."""
    ca = TestCA()
    ids = {n: ca.identity(n) for n in ("host-a", "host-b")}
    quiet = Logger("t", stream=open("/dev/null", "w"))
    wire: list[tuple[str, bytes]] = []
    devs: dict[str, Device] = {}

    def send_b(pkt: bytes, addr) -> None:
        if pkt[0] != TYPE_RESPONSE:  # only the handshake response is delivered at once
            wire.append(("host-b", pkt))
            return
        devs["host-a"].on_control([ControlItem(CTRL_RAW, -1, pkt, ("192.0.2.2", 4787))], 0.2)
        src, keepalive = wire.pop()
        assert src == "host-a" and keepalive[0] == TYPE_DATA
        devs["host-b"].dp.receive(keepalive, ("192.0.2.1", 4787))

    devs["host-a"] = Device(ids["host-a"], FakeDataPath(), lambda pkt, addr: wire.append(("host-a", pkt)),
                            lambda: ca.now * 10**9, quiet)
    devs["host-b"] = Device(ids["host-b"], FakeDataPath(), send_b, lambda: ca.now * 10**9, quiet)
    a, b = devs["host-a"], devs["host-b"]
    pa = a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"), [("192.0.2.2", 4787)])
    pb = b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [("192.0.2.1", 4787)])
    a.connect(pa, 0.0)
    src, init = wire.pop()
    assert src == "host-a"
    b.on_control([ControlItem(CTRL_RAW, -1, init, ("192.0.2.1", 4787))], 0.1)
    assert b.dp.stats(pb.slot).has_keys  # the responder may answer at once
