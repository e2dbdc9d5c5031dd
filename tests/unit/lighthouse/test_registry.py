import ipaddress

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from engine.proto.errors import RemoteProtocolError
from lighthouse import wire
from lighthouse.leases import LeaseStore
from lighthouse.registry import Registry

NET = ipaddress.IPv4Network("10.87.0.0/16")


@pytest.fixture
def reg(tmp_path):
    return Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)


def register(reg, name, src, now=0.0, endpoints=()):
    [(to, data)] = reg.handle(name, b"cert-" + name.encode(), wire.encode("register", endpoints=list(endpoints)),
                              src, now)
    assert to == name
    return wire.decode(data)


def test_register_gives_a_lease_and_the_observed_endpoint(reg):
    kind, msg = register(reg, "a", ("203.0.113.5", 40000), endpoints=[("172.16.1.2", 4787)])
    assert kind == "lease" and msg["subnet"] == "10.87.1.0/24" and msg["observed"] == ("203.0.113.5", 40000)
    assert register(reg, "a", ("203.0.113.5", 40001))[1]["subnet"] == "10.87.1.0/24"  # sticky


def test_query_answers_and_punches_the_target(reg):
    register(reg, "a", ("203.0.113.5", 40000), endpoints=[("172.16.1.2", 4787)])
    register(reg, "b", ("198.51.100.7", 50000), endpoints=[("172.16.2.2", 4787)])
    out = reg.handle("a", b"cert-a", wire.encode("query", addr="10.87.2.40"), ("203.0.113.5", 40000), 1.0)
    (to1, peer), (to2, punch) = out
    kind, msg = wire.decode(peer)
    assert to1 == "a" and kind == "peer" and msg["name"] == "b" and msg["subnet"] == "10.87.2.0/24"
    assert msg["endpoints"] == [("198.51.100.7", 50000), ("172.16.2.2", 4787)]  # observed first
    kind, msg = wire.decode(punch)
    assert to2 == "b" and kind == "punch" and msg["name"] == "a"
    assert msg["endpoints"][0] == ("203.0.113.5", 40000)


def test_query_for_nobody(reg):
    register(reg, "a", ("203.0.113.5", 1))
    [(to, data)] = reg.handle("a", b"cert-a", wire.encode("query", addr="10.87.9.1"), ("203.0.113.5", 1), 1.0)
    assert wire.decode(data)[0] == "error" and wire.decode(data)[1]["code"] == "unknown"


def test_offline_nodes_expire_but_keep_their_lease(reg):
    register(reg, "a", ("203.0.113.5", 1), now=0)
    assert reg.expire(1000) == ["a"]
    assert register(reg, "a", ("203.0.113.5", 1), now=1001)[1]["subnet"] == "10.87.1.0/24"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_is_refused_as_a_remote_error(data):
    try:
        wire.decode(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "v", "endpoints", "addr", "name", "subnet", "cert", "observed"]),
                       st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=30), st.binary(max_size=40),
                                 st.lists(st.lists(st.one_of(st.text(max_size=15), st.integers(-2**63, 2**63 - 1)), max_size=3),
                                          max_size=10)), max_size=8))
def test_structured_garbage_never_escapes_as_another_error(fields):
    data = msgpack.packb({"v": 1, **fields}, use_bin_type=True)
    reg = Registry(LeaseStore(":memory:", NET))
    register(reg, "a", ("203.0.113.5", 1))
    try:
        reg.handle("a", b"c", data, ("203.0.113.5", 1), 0.0)
    except RemoteProtocolError:
        pass


def test_oversized_message(reg):
    with pytest.raises(RemoteProtocolError) as info:
        reg.handle("a", b"c", b"\x80" * 5000, ("203.0.113.5", 1), 0.0)
    assert info.value.reason == "oversized_control"
