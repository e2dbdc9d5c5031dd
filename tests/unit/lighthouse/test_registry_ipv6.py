"""The lighthouse with IPv6 nodes: an IPv6 observed address and IPv6 own endpoints are
handed out in peer and punch messages; IPv6 addresses nobody should be sent to are
dropped one by one and counted, as IPv4 ones are."""
import ipaddress

import pytest

from flatnet.engine.proto import control as wire
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry

NET = ipaddress.IPv4Network("10.87.0.0/16")


@pytest.fixture
def reg(tmp_path):
    return Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)


def register(reg, name, src, endpoints=(), gateway=None):
    out = reg.handle(name, b"cert-" + name.encode(),
                     wire.encode("register", endpoints=list(endpoints), gateway=gateway), src, 0.0)
    return wire.decode(out[0][1])


def test_ipv6_nodes_are_handed_out_with_ipv6_endpoints(reg):
    kind, lease = register(reg, "a", ("2001:db8:1::5", 40000), endpoints=[("2001:db8:1::5", 4787), ("192.0.2.5", 4787)])
    assert kind == "lease" and lease["observed"] == ("2001:db8:1::5", 40000)
    register(reg, "b", ("2001:db8:2::7", 50000), endpoints=[("fd00:2::7", 4787)])
    (_, peer), (_, punch) = reg.handle("a", b"cert-a", wire.encode("query", name="b"), ("2001:db8:1::5", 40000), 1.0)
    assert wire.decode(peer)[1]["endpoints"] == [("2001:db8:2::7", 50000), ("fd00:2::7", 4787)]
    assert wire.decode(punch)[1]["endpoints"] == [("2001:db8:1::5", 40000), ("2001:db8:1::5", 4787),
                                                  ("192.0.2.5", 4787)]


def test_ipv6_addresses_nobody_should_be_sent_to_are_dropped_and_counted(reg):
    bad = [("::1", 22), ("fe80::1", 4787), ("ff02::1", 4787), ("::ffff:127.0.0.1", 22), ("::ffff:169.254.169.254", 80)]
    register(reg, "a", ("::1", 40000), endpoints=bad + [("2001:db8:1::5", 4787)], gateway=("fe80::1", 80))
    node = reg.nodes["a"]
    # the mapped forms were already read as IPv4 by the wire, then refused like IPv4
    assert node.endpoints() == [("2001:db8:1::5", 4787)] and node.gateway is None
    assert reg.limited["endpoints_refused"] == len(bad) + 1
