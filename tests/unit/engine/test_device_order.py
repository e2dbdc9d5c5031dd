"""Two engines' Devices over a fake wire, each with a data path that records calls.
The responder's receive key is in its data path before its response leaves, so the
initiator's held packets (sent the moment the response arrives) are not dropped as
`unknown_index`; the responder's send key is only staged (used once the initiator's
first packet arrives), and the initiator sends a keepalive at once to confirm. Both were
seen losing the first datagram in the first-packet integration test, the second when
both hosts handshook at the same time."""
import ipaddress

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import TYPE_DATA
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
    assert log.index("add_rx") < log.index("send:host-b") < log.index("stage_tx_key"), log
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
