"""Two engines' Devices over a fake wire, each with a data path that records calls:
the responder's receive key is in its data path before its response leaves, so the
initiator's held packets (sent the moment the response arrives) are not dropped as
`unknown_index` (seen in the first-packet integration test)."""
import ipaddress

from engine.datapath import CTRL_RAW, ControlItem
from engine.device import Device
from engine.log import Logger
from tests.harness.pki import TestCA


class RecordingDataPath:
    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        return lambda *args: self.log.append(name)


def test_the_responder_installs_its_receive_key_before_its_response_leaves():
    ca = TestCA()
    ids = {n: ca.identity(n) for n in ("host-a", "host-b")}
    log = []
    wire = []
    quiet = Logger("t", stream=open("/dev/null", "w"))
    devs = {n: Device(ids[n], RecordingDataPath(log), lambda pkt, addr, n=n: (log.append(f"send:{n}"),
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
    assert log.index("add_rx") < log.index("send:host-b") < log.index("set_tx_key"), log
