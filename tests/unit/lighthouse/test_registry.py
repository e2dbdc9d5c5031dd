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


# ---- service names: one rule, unique across nodes (issue 13 item 6)

def svc(name, addr, host="", prefix="/"):
    return {"name": name, "addr": addr, "port": 80, "host": host, "prefix": prefix}


def register_services(reg, name, src, services, now=0.0):
    out = reg.handle(name, b"cert-" + name.encode(), wire.encode("register", endpoints=[], services=services),
                     src, now)
    assert all(to == name for to, _ in out)
    msgs = [wire.decode(data) for _, data in out]
    assert msgs[0][0] == "lease"
    return {m["service"]: m["msg"] for kind, m in msgs[1:] if kind == "error" and m["code"] == "service_refused"}


def catalog(reg, now):
    [(_, data)] = reg.handle("a", b"cert-a", wire.encode("catalog_query", offset=0), ("203.0.113.5", 1), now)
    return sorted((s["name"], s["node"]) for s in wire.decode(data)[1]["services"])


def test_a_taken_name_is_refused_and_the_first_node_keeps_it(reg):
    assert register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5")]) == {}
    refused = register_services(reg, "b", ("198.51.100.7", 1), [svc("wiki", "10.87.2.5"), svc("git", "10.87.2.6")],
                                now=1)
    assert refused == {"wiki": "service 'wiki': name 'wiki' is already published by node a; the first node keeps "
                               "it while it is online"}
    assert catalog(reg, 2) == [("git", "b"), ("wiki", "a")]
    # the owner re-registers: still its own
    assert register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5")], now=3) == {}
    assert catalog(reg, 4) == [("git", "b"), ("wiki", "a")]


def test_hosts_are_unique_too_but_prefixes_split_a_host(reg):
    register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5", host="Docs.Office.lan"),
                                                      svc("notes", "10.87.1.6")])
    refused = register_services(reg, "b", ("198.51.100.7", 1),
                                [svc("docs", "10.87.2.5", host="docs.office.lan"),
                                 svc("api", "10.87.2.6", host="docs.office.lan", prefix="/api"),
                                 svc("x", "10.87.2.7", host="notes")], now=1)
    assert set(refused) == {"docs", "x"}
    assert "host 'docs.office.lan' (prefix '/') is already published by node a" in refused["docs"]
    assert "host 'notes' (prefix '/') is already published by node a" in refused["x"]


def test_one_bad_name_in_a_register_refuses_that_service_alone(reg):
    """Before: a name outside the rule (here '_') made the whole register message
    malformed (wire.decode raised): the node's endpoints and every other service were
    dropped with it. Unicode ('café') passed and then froze the gateways' tables."""
    refused = register_services(reg, "a", ("203.0.113.5", 1),
                                [svc("my_app", "10.87.1.5"), svc("café", "10.87.1.6"), svc("wiki", "10.87.1.7"),
                                 svc("docs", "10.87.1.8", host="a..b"), svc("far", "10.87.9.9")])
    assert refused == {
        "my_app": "service 'my_app': name: character '_' is not allowed (use a-z, 0-9 and '-')",
        "café": "service 'café': name: not ASCII: write international names in punycode (xn--...)",
        "docs": "service 'docs': host: empty label (two dots, or a dot at the start or end)",
        "far": "service 'far': address 10.87.9.9 is not in the node's subnet 10.87.1.0/24"}
    assert catalog(reg, 1) == [("wiki", "a")]
    assert reg.refused_services == 4


def test_a_name_is_freed_when_its_owner_goes_offline(reg):
    register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5")], now=0)
    assert "wiki" in register_services(reg, "b", ("198.51.100.7", 1), [svc("wiki", "10.87.2.5")], now=100)
    # a is silent for more than 3 x ttl: b's next register takes the name (before or after expire())
    assert register_services(reg, "b", ("198.51.100.7", 1), [svc("wiki", "10.87.2.5")], now=181) == {}
    assert catalog(reg, 182) == [("wiki", "b")]
    # a comes back: now b holds it
    assert "wiki" in register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5")], now=183)
    reg.expire(1000)
    assert reg.claims == {} and reg.claimed_by == {}


def test_a_node_dropping_a_service_frees_its_name(reg):
    register_services(reg, "a", ("203.0.113.5", 1), [svc("wiki", "10.87.1.5")])
    register_services(reg, "a", ("203.0.113.5", 1), [], now=1)
    assert register_services(reg, "b", ("198.51.100.7", 1), [svc("wiki", "10.87.2.5")], now=2) == {}


def test_the_same_name_twice_in_one_register(reg):
    refused = register_services(reg, "a", ("203.0.113.5", 1),
                                [svc("wiki", "10.87.1.5"), svc("notes", "10.87.1.6", host="wiki")])
    assert refused == {"notes": "service 'notes': host 'wiki' (prefix '/') is used twice by this node"}
