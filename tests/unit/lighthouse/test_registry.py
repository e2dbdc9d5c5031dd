import ipaddress

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry

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


def test_answers_follow_a_re_registration_that_moves_and_are_kept_when_nothing_moved(reg):
    """A node re-registers every 10 s: unchanged, the answers about it are the bytes
    already encoded; a new observed address, own endpoint or lease is in the next one."""
    register(reg, "a", ("203.0.113.5", 40000))
    def ask(now):
        out = reg.handle("a", b"cert-a", wire.encode("query", name="b"), ("203.0.113.5", 40000), now)
        return out[0][1]
    register(reg, "b", ("198.51.100.7", 50000), endpoints=[("172.16.2.2", 4787)])
    first = ask(1.0)
    register(reg, "b", ("198.51.100.7", 50000), now=2.0, endpoints=[("172.16.2.2", 4787)])
    assert ask(3.0) is first  # nothing moved: not encoded again
    for now, src, own in ((4.0, ("198.51.100.7", 50001), [("172.16.2.2", 4787)]),   # its NAT moved it
                          (6.0, ("198.51.100.7", 50001), [("172.16.9.9", 4787)])):  # its own address changed
        register(reg, "b", src, now=now, endpoints=own)
        assert wire.decode(ask(now + 1))[1]["endpoints"] == [src, *own]


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


# ---- issue 13 items 5 and 8: endpoints, limits, rates

BAD_ENDPOINTS = [("127.0.0.1", 22), ("169.254.169.254", 80), ("0.0.0.0", 9), ("224.0.0.251", 5353),
                 ("255.255.255.255", 9)]


def test_endpoints_nobody_should_be_sent_to_never_reach_a_peer_or_punch(reg):
    register(reg, "a", ("203.0.113.5", 40000), endpoints=BAD_ENDPOINTS + [("10.0.0.5", 4787)])
    register(reg, "b", ("198.51.100.7", 50000), endpoints=[("172.16.2.2", 4787)])
    assert reg.limited["endpoints_refused"] == len(BAD_ENDPOINTS)
    out = dict(reg.handle("b", b"cert-b", wire.encode("query", name="a"), ("198.51.100.7", 50000), 1.0))
    assert wire.decode(out["b"])[1]["endpoints"] == [("203.0.113.5", 40000), ("10.0.0.5", 4787)]
    out = dict(reg.handle("a", b"cert-a", wire.encode("query", name="b"), ("203.0.113.5", 40000), 1.0))
    punch = wire.decode(out["b"])[1]
    assert punch["endpoints"] == [("203.0.113.5", 40000), ("10.0.0.5", 4787)] and punch["local"] == [("10.0.0.5", 4787)]


def test_a_node_seen_on_loopback_is_not_handed_out_there(reg):
    register(reg, "a", ("127.0.0.1", 40000), endpoints=[("10.0.0.5", 4787)])  # an engine on the lighthouse host
    register(reg, "b", ("198.51.100.7", 50000))
    out = dict(reg.handle("b", b"cert-b", wire.encode("query", name="a"), ("198.51.100.7", 50000), 1.0))
    assert wire.decode(out["b"])[1]["endpoints"] == [("10.0.0.5", 4787)]


def test_eight_own_endpoints_and_a_large_certificate_still_make_messages_the_receiver_accepts(reg):
    """item 8: 8 own addresses + the observed one were 9 endpoints in a punch, which
    wire.decode refuses (at most 8); a certificate near its size limit overflowed
    MAX_MESSAGE. The lighthouse must never build a message its receiver refuses."""
    eight = [(f"10.0.{i}.{200 + i}", 60000 + i) for i in range(8)]
    big_cert = b"c" * 1024  # the largest certificate wire.decode takes
    for name, src, cert in (("a" * 64, ("203.0.113.255", 65535), big_cert), ("b", ("198.51.100.7", 50000), b"cert-b")):
        reg.handle(name, cert, wire.encode("register", endpoints=eight), src, 0.0)
    for asker, target in (("b", "a" * 64), ("a" * 64, "b")):
        for _to, data in reg.handle(asker, b"x", wire.encode("query", name=target), ("198.51.100.7", 50000), 1.0):
            kind, msg = wire.decode(data)  # raises if the receiver would refuse it
            assert kind in ("peer", "punch") and 1 <= len(msg["endpoints"]) <= wire.MAX_ENDPOINTS
            assert set(msg["local"]) <= set(msg["endpoints"])
    assert len(wire.decode(reg.handle("a" * 64, b"x", wire.encode("query", name="b"), ("1.2.3.4", 5), 1.0)[0][1])[1]
               ["endpoints"]) == wire.MAX_ENDPOINTS  # a small certificate: all 8 fit


def test_queries_are_rate_limited_per_node(reg):
    from flatnet.lighthouse.registry import QUERY_BURST, QUERY_RATE
    register(reg, "a", ("203.0.113.5", 1))
    register(reg, "b", ("198.51.100.7", 2))
    q = wire.encode("query", name="b")
    for _ in range(int(QUERY_BURST)):
        reg.handle("a", b"cert-a", q, ("203.0.113.5", 1), 1.0)
    with pytest.raises(RemoteProtocolError) as info:
        reg.handle("a", b"cert-a", q, ("203.0.113.5", 1), 1.0)
    assert info.value.reason == "query_rate_limited" and reg.limited["queries"] == 1
    reg.handle("b", b"cert-b", wire.encode("query", name="a"), ("198.51.100.7", 2), 1.0)  # others are not affected
    for _ in range(int(QUERY_RATE)):  # one second later: QUERY_RATE more
        reg.handle("a", b"cert-a", q, ("203.0.113.5", 1), 2.0)
    with pytest.raises(RemoteProtocolError):
        reg.handle("a", b"cert-a", q, ("203.0.113.5", 1), 2.0)


def test_punches_to_one_node_are_capped_but_askers_still_get_their_answer(reg):
    from flatnet.lighthouse.registry import PUNCH_BURST, PUNCH_RATE
    register(reg, "target", ("198.51.100.7", 2))
    punches = answers = 0
    for i in range(int(PUNCH_BURST) + 20):
        register(reg, f"n{i}", ("203.0.113.5", 1000 + i))
        out = reg.handle(f"n{i}", b"c", wire.encode("query", name="target"), ("203.0.113.5", 1000 + i), 1.0)
        answers += sum(1 for to, _ in out if to == f"n{i}")
        punches += sum(1 for to, _ in out if to == "target")
    assert answers == PUNCH_BURST + 20 and punches == PUNCH_BURST and reg.limited["punches"] == 20
    out = reg.handle("n0", b"c", wire.encode("query", name="target"), ("203.0.113.5", 1000), 1.0 + 1 / PUNCH_RATE)
    assert [to for to, _ in out] == ["n0", "target"]


@pytest.mark.parametrize("fields", [{"t": "catalog_query", "offset": float("inf")},
                                    {"t": "catalog_query", "offset": float("nan")},
                                    {"t": "catalog_query", "offset": -1}, {"t": "catalog_query", "offset": True},
                                    {"t": "catalog", "services": [], "next": float("-inf")},
                                    {"t": "lease", "subnet": "10.87.1.0/24", "network": "10.87.0.0/16",
                                     "observed": ["192.0.2.1", 1], "ttl": float("inf")},
                                    {"t": "lease", "subnet": "10.87.1.0/24", "network": "10.87.0.0/16",
                                     "observed": ["192.0.2.1", 1], "ttl": 10**30 % 2**64}])
def test_non_integers_and_out_of_range_numbers_are_refused(fields):
    """item 8: `inf` in offset/ttl escaped decode as OverflowError."""
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(msgpack.packb({"v": 1, **fields}, use_bin_type=True))
    assert info.value.reason == "bad_control"


_ANY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                              st.text(max_size=20), st.binary(max_size=40)),
                    lambda inner: st.one_of(st.lists(inner, max_size=9), st.dictionaries(st.text(max_size=10), inner,
                                                                                       max_size=5)), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(wire.SCHEMA)),
       st.dictionaries(st.sampled_from(["endpoints", "services", "gateway", "offset", "next", "subnet", "network",
                                        "observed", "ttl", "addr", "name", "cert", "local", "code", "msg",
                                        "relay", "relays"]),
                       _ANY, max_size=8))
def test_every_message_type_with_any_field_values_decodes_or_is_a_counted_drop(kind, fields):
    """Fuzz: any map under any message type (floats, inf, nan, nesting, huge ints)
    is either a valid message or RemoteProtocolError, never another exception; and
    what decodes encodes again within the limits."""
    try:
        kind2, msg = wire.decode(msgpack.packb({"t": kind, "v": 1, **fields}, use_bin_type=True))
    except RemoteProtocolError:
        return
    assert kind2 == kind


def test_a_gateway_address_nobody_should_be_sent_to_is_not_published(reg):
    """Other hosts' gateways proxy HTTP to a node's published gateway: a node must not
    point them at the metadata service (SSRF), as with punch endpoints."""
    svc = [{"name": "web", "addr": "10.87.1.5", "port": 80}]
    for gw, expected in ((("169.254.169.254", 80), None), (("127.0.0.1", 8080), None),
                         (("192.168.1.10", 80), ("192.168.1.10", 80))):
        reg.handle("a", b"cert-a", wire.encode("register", endpoints=[], services=svc, gateway=gw),
                   ("203.0.113.5", 1), 0.0)
        [(_, data)] = reg.handle("a", b"cert-a", wire.encode("catalog_query", offset=0), ("203.0.113.5", 1), 0.0)
        [entry] = wire.decode(data)[1]["services"]
        assert entry["gateway"] == expected
    assert reg.limited["endpoints_refused"] == 2


def test_a_catalog_of_long_entries_is_paged_to_fit_and_complete(reg):
    """Each register fits in a message, but 8 long entries from several nodes made a
    5 KB catalog page: encode raised ValueError in the lighthouse (no catalog for
    anyone). Pages now shrink to fit, and paging still returns every entry."""
    names = []
    for n in range(4):
        node = f"n{n}"
        subnet = register(reg, node, ("203.0.113.5", 100 + n))[1]["subnet"]
        svc = [{"name": f"s{n}-{i}", "addr": subnet[:-4] + "5", "port": 80, "host": f"{'h' * 60}.{'h' * 60}.n{n}-{i}{'h' * 56}",
                "prefix": "/" + "p" * 150} for i in range(3)]
        names += [s["name"] for s in svc]
        reg.handle(node, b"cert-" + node.encode(), wire.encode("register", endpoints=[], services=svc),
                   ("203.0.113.5", 100 + n), 0.0)
    got, offset = [], 0
    for _ in range(20):
        [(_, data)] = reg.handle("n0", b"cert-n0", wire.encode("catalog_query", offset=offset), ("203.0.113.5", 100),
                                 0.0)
        kind, msg = wire.decode(data)
        got += [s["name"] for s in msg["services"]]
        offset = msg["next"]
        if not offset:
            break
    assert sorted(got) == sorted(names)


# ---- node relays (register `relay`, lease `relays`; docs/lighthouse.md "Relays")
from tests.harness.pki import TestCA  # noqa: E402

_CA = TestCA()


def register_as(reg, name, src, now=0.0, groups=(), relay=False):
    cert = _CA.identity(name, list(groups)).cert.raw
    extra = {"relay": True} if relay else {}
    replies = reg.handle(name, cert, wire.encode("register", endpoints=[], **extra), src, now)
    return wire.decode(replies[0][1])[1]


def test_a_lease_names_the_online_nodes_certified_to_relay_that_asked(reg):
    register_as(reg, "relay-b", ("203.0.113.2", 4787), groups=["relay"], relay=True)
    register_as(reg, "relay-a", ("203.0.113.1", 4787), groups=["relay"], relay=True)
    register_as(reg, "quiet", ("203.0.113.3", 4787), groups=["relay"])           # certified, does not ask
    register_as(reg, "pretender", ("203.0.113.4", 4787), relay=True, now=1.5)     # asks, not certified
    assert reg.limited["relay_offers_refused"] == 1
    lease = register_as(reg, "host", ("198.51.100.9", 4787), now=2.0)
    assert lease["relays"] == ["relay-a", "relay-b"]           # the same list, in name order, for everyone
    assert register_as(reg, "relay-a", ("203.0.113.1", 4787), groups=["relay"], relay=True,
                       now=2.1)["relays"] == ["relay-b"]       # never itself
    register_as(reg, "relay-b", ("203.0.113.2", 4787), groups=["relay"], now=2.2)  # stops offering
    assert register_as(reg, "host", ("198.51.100.9", 4787), now=2.3)["relays"] == ["relay-a"]
    reg.expire(1000.0)                                         # gone offline: gone from leases
    assert reg.relay_nodes == set()


def test_a_lease_names_at_most_eight_relays(reg):
    for i in range(12):
        register_as(reg, f"relay-{i:02d}", ("203.0.113.1", 5000 + i), groups=["relay"], relay=True)
    relays = register_as(reg, "host", ("198.51.100.9", 4787), now=2.0)["relays"]
    assert relays == [f"relay-{i:02d}" for i in range(wire.MAX_RELAYS)]
    assert register_as(reg, "relay-00", ("203.0.113.1", 5000), groups=["relay"], relay=True,
                       now=2.0)["relays"] == [f"relay-{i:02d}" for i in range(1, wire.MAX_RELAYS + 1)]


@pytest.mark.parametrize("fields", [{"relays": "relay-a"}, {"relays": [""]}, {"relays": ["x" * 65]},
                                    {"relays": [f"r{i}" for i in range(9)]}, {"relays": [1]}, {"relay": 1}])
def test_relay_fields_out_of_their_limits_are_refused(fields):
    base = {"t": "lease", "v": 1, "subnet": "10.87.1.0/24", "network": "10.87.0.0/16",
            "observed": ["192.0.2.1", 4787], "relay": True}
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(msgpack.packb({**base, **fields}, use_bin_type=True))
    assert info.value.reason == "bad_control"
    with pytest.raises(RemoteProtocolError):
        wire.decode(msgpack.packb({"t": "register", "v": 1, "relay": "yes"}, use_bin_type=True))


def test_the_relay_tables_go_to_the_data_path_one_node_at_a_time(tmp_path):
    """on_member: what the C data path forwards for (relay.c) is exactly what the
    forwarder would: a registered node at the address it registered from."""
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)
    seen = []
    reg.on_member = lambda *a: seen.append(a)
    register(reg, "a", ("203.0.113.5", 1), now=0)
    register(reg, "a", ("203.0.113.5", 2), now=1)  # moved: the new address
    assert seen == [("a", 1, ("203.0.113.5", 1)), ("a", 1, ("203.0.113.5", 2))]
    assert reg.forwarder.sender(("203.0.113.5", 2), 1) == 1 and reg.forwarder.sender(("203.0.113.5", 1), 1) is None
    assert reg.expire(1000) == ["a"] and seen[-1] == ("a", None, None)


def test_a_lighthouse_that_does_not_relay_gives_the_data_path_no_members(tmp_path):
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60, relay=False)
    seen = []
    reg.on_member = lambda *a: seen.append(a)
    register(reg, "a", ("203.0.113.5", 1), now=0)
    assert seen == []


def test_a_gone_address_ends_relaying_from_and_to_the_node_registered_there(tmp_path):
    """A TCP relay connection closed: its loopback shim address is free for the next
    connection, a stranger's. Nothing is relayed from it or to it any more until the
    node registers again (from its next connection)."""
    from flatnet.engine.proto.relay import wrap
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)
    seen = []
    reg.on_member = lambda *a: seen.append(a)
    shim = ("127.0.0.1", 40001)
    register(reg, "a", shim)
    register(reg, "b", ("203.0.113.7", 1))
    block_a, block_b = reg.forwarder.sender(shim, 0), reg.forwarder.sender(("203.0.113.7", 1), 0)
    assert reg.forwarder.forward(wrap(block_a, b"\x04x"), ("203.0.113.7", 1), 0)[1] == shim
    reg.address_gone(shim)
    assert seen[-1] == ("a", None, None) and reg.forwarder.sender(shim, 0) is None
    for packet, src, why in [(wrap(block_b, b"\x04x"), shim, "relay_refused"),
                             (wrap(block_a, b"\x04x"), ("203.0.113.7", 1), "relay_unknown_target")]:
        with pytest.raises(RemoteProtocolError) as info:
            reg.relay(packet, src, 0)
        assert info.value.reason == why
    reg.address_gone(("127.0.0.1", 9))  # nobody there: nothing happens
    register(reg, "a", ("127.0.0.1", 40002), now=1)  # its next connection
    assert reg.forwarder.forward(wrap(block_a, b"\x04x"), ("203.0.113.7", 1), 1)[1] == ("127.0.0.1", 40002)


def test_a_node_is_no_relay_target_at_an_address_another_node_registered_from_since(tmp_path):
    """A NAT gave a's old address to c, which registered from it: what is relayed to
    a's block must not go to c."""
    from flatnet.engine.proto.relay import wrap
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), NET), ttl=60)
    x = ("203.0.113.5", 1)
    register(reg, "a", x)
    register(reg, "b", ("203.0.113.7", 1))
    block_a = reg.forwarder.sender(x, 0)
    register(reg, "c", x, now=1)
    with pytest.raises(RemoteProtocolError) as info:
        reg.relay(wrap(block_a, b"\x04x"), ("203.0.113.7", 1), 1)
    assert info.value.reason == "relay_unknown_target"


# ---- found by the clean-room lighthouse client (tests/cleanroom/lighthouse.py)

def test_own_endpoints_past_seven_are_counted_as_refused(reg):
    """docs/protocol.md 10.3: at most MAX_LOCAL own endpoints are kept; the rest are
    refused and counted (they were dropped without a count)."""
    register(reg, "a", ("203.0.113.5", 40000), endpoints=[(f"192.0.2.{i}", 4787) for i in range(30, 38)])
    assert reg.limited["endpoints_refused"] == 1


@pytest.mark.parametrize("v", [1.0, True])
def test_v_must_be_the_integer_1(v):
    """10.1: `v` is an int; 1.0 and true equal 1 in Python and were taken."""
    with pytest.raises(RemoteProtocolError) as e:
        wire.decode(msgpack.packb({"t": "register", "v": v}))
    assert e.value.reason == "bad_control"


def test_a_query_checks_its_name_even_when_the_address_wins():
    """10.1: every field keeps its rule; `name` beside `addr` was not looked at."""
    assert wire.decode(msgpack.packb({"t": "query", "v": 1, "addr": "10.87.3.5", "name": "b"}))[1] == {
        "addr": "10.87.3.5"}
    for bad in (5, "", "x" * 65):
        with pytest.raises(RemoteProtocolError):
            wire.decode(msgpack.packb({"t": "query", "v": 1, "addr": "10.87.3.5", "name": bad}))
