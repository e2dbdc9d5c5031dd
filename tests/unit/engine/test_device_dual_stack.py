"""A host with IPv4 and IPv6 prefers what answers first: b sends one initiation to each
of a's candidates; a answers the copy that arrives first, from whichever family, and
that source becomes the path on both sides. The later copy is a replay: it changes
nothing."""
import ipaddress
import itertools

import pytest

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from tests.harness.pki import TestCA
from tests.unit.engine.test_device_paths import FakeDataPath

A4, A6 = ("192.0.2.1", 4787), ("2001:db8::1", 4787)
B4, B6 = ("192.0.2.2", 4787), ("2001:db8::2", 4787)


@pytest.mark.parametrize("first, later", [((A6, B6), (A4, B4)), ((A4, B4), (A6, B6))], ids=["ipv6-first", "ipv4-first"])
def test_the_family_that_answers_first_becomes_the_path(first, later):
    ca = TestCA()
    tick = itertools.count(1)
    wall = lambda: ca.now * 10**9 + next(tick) * 1000  # noqa: E731
    quiet = Logger("t", stream=open("/dev/null", "w"))
    wire = []
    ids = {n: ca.identity(n) for n in ("host-a", "host-b")}
    a = Device(ids["host-a"], FakeDataPath(), lambda p, addr: wire.append(("a", p, addr)), wall, quiet)
    b = Device(ids["host-b"], FakeDataPath(), lambda p, addr: wire.append(("b", p, addr)), wall, quiet)
    pb = a.add_peer(ids["host-b"].cert, ipaddress.IPv4Network("10.87.2.0/24"), [])
    pa = b.add_peer(ids["host-a"].cert, ipaddress.IPv4Network("10.87.1.0/24"), [A4, A6])

    b.connect(pa, 0.0)
    inits = {addr: p for src, p, addr in wire if src == "b" and p[0] == 1}
    assert set(inits) == {A4, A6} and inits[A4] == inits[A6]  # the same initiation to both
    wire.clear()
    (to_a, from_b), (to_a_later, from_b_later) = first, later
    a.on_control([ControlItem(CTRL_RAW, -1, inits[to_a], from_b)], 0.1)
    assert pb.endpoint == from_b and a.dp.endpoint[pb.slot] == from_b
    responses = [(p, addr) for src, p, addr in wire if src == "a" and p[0] == 2]
    assert [addr for _, addr in responses] == [from_b]
    wire.clear()
    a.on_control([ControlItem(CTRL_RAW, -1, inits[to_a_later], from_b_later)], 0.2)  # the slower copy
    assert pb.endpoint == from_b and a.errors["replayed_initiation"] == 1 and not wire
    b.on_control([ControlItem(CTRL_RAW, -1, responses[0][0], to_a)], 0.3)
    assert pa.session.current is not None and pa.endpoint == to_a
