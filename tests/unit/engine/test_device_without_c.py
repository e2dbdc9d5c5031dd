"""The Device is sans-IO: it imports no compiled code and runs against a fake data path
(tests/harness/fakedp.py), with no root, no threads and no C module.

Two Devices over a fake wire on a virtual clock: handshake to established, a path
move after an authenticated packet from a new source, and a counted drop."""
from __future__ import annotations

import ipaddress
import subprocess
import sys

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto.constants import TYPE_INITIATION, WIRE_VERSION
from flatnet.engine.proto.session import State
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import TestCA

A_ADDR, B_ADDR, B_MOVED = ("192.0.2.1", 4787), ("192.0.2.2", 4787), ("192.0.2.22", 5000)


def test_the_device_imports_without_the_c_module() -> None:
    """Run with the compiled module made unimportable: the Device still imports."""
    code = ("import sys; sys.modules['flatnet.engine.crypto'] = None\n"
            "import flatnet.engine.device, tests.harness.fakedp\n"
            "assert 'flatnet.engine.datapath' not in sys.modules, 'engine.datapath loaded'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


class Pair:
    """Devices a and b; wire: (from, packet, to) in sending order; `now` virtual."""

    def __init__(self) -> None:
        self.ca = TestCA()
        self.now = 0.0
        self.wire: list[tuple[str, bytes, tuple[str, int]]] = []
        self.src = {"a": A_ADDR, "b": B_ADDR}
        ids = {n: self.ca.identity(n) for n in ("host-a", "host-b")}
        self.wall = 0

        def wall_ns() -> int:  # strictly increasing: every initiation is fresh
            self.wall += 1000
            return self.ca.now * 10**9 + self.wall

        def dev(name: str) -> Device:
            dp = FakeDataPath(clock=lambda: self.now)
            return Device(ids[f"host-{name}"], dp, lambda p, addr: self.wire.append((name, p, addr)), wall_ns,
                          Logger("t", stream=open("/dev/null", "w")))
        self.a, self.b = dev("a"), dev("b")
        self.pb = self.a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"), [B_ADDR])
        self.pa = self.b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [A_ADDR])

    def deliver(self, rounds: int = 10) -> None:
        """Everything on the wire to the other side, from the address its sender has now."""
        for _ in range(rounds):
            if not self.wire:
                return
            sender, packet, _ = self.wire.pop(0)
            self.now += 0.01
            to = self.b if sender == "a" else self.a
            to.on_control(to.dp.receive(packet, self.src[sender]), self.now)  # type: ignore[attr-defined]
        assert not self.wire, "the wire did not go quiet"


def test_handshake_to_established() -> None:
    n = Pair()
    assert n.pb.session.state is State.IDLE
    n.a.connect(n.pb, n.now)
    assert n.pb.session.state is State.HANDSHAKING
    n.deliver()
    assert n.pb.session.state is State.ESTABLISHED and n.pa.session.state is State.ESTABLISHED
    assert n.a.path_of(n.pb) == "direct" and n.b.path_of(n.pa) == "direct"
    assert n.a.peer_table(n.now)[0]["state"] == "established"
    assert n.b.dp.stats(n.pa.slot).has_keys  # the responder's staged key is in use: a's keepalive came


def test_an_authenticated_packet_from_a_new_source_moves_the_path() -> None:
    n = Pair()
    n.a.connect(n.pb, n.now)
    n.deliver()
    assert n.pb.endpoint == B_ADDR
    # b's NAT mapping changed: its next keepalive comes from B_MOVED
    n.src["b"] = B_MOVED
    assert n.b.send_message_to(n.pa, b"", [A_ADDR])
    n.deliver()
    assert n.pb.endpoint == B_MOVED and n.a.dp.endpoint[n.pb.slot] == B_MOVED  # type: ignore[attr-defined]


def test_an_unauthenticated_packet_moves_nothing_and_is_counted() -> None:
    n = Pair()
    n.a.connect(n.pb, n.now)
    n.deliver()
    forged = bytes([TYPE_INITIATION, WIRE_VERSION, 0, 0]) + bytes(200)  # an initiation without a valid mac1
    n.a.on_control([ControlItem(CTRL_RAW, -1, forged, ("198.51.100.66", 6666))], n.now)
    assert n.a.errors == {"bad_mac1": 1}
    assert n.pb.endpoint == B_ADDR and n.pb.session.state is State.ESTABLISHED
