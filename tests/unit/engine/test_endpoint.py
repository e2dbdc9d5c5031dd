"""Endpoints: reading ("192.0.2.1:4787", "[2001:db8::1]:4787", host names where allowed),
writing, the policy for IPv4 and IPv6 (issue 17), the hosts-file resolver, the
dual-stack socket helpers, and the attacker-reachable parsers fuzzed."""
import socket

import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine import resolve
from flatnet.engine.config import ConfigError, parse
from flatnet.engine.io import udp
from flatnet.engine.proto import endpoint
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire


@pytest.mark.parametrize("text, want", [
    ("192.0.2.1:4787", ("192.0.2.1", 4787)),
    ("[2001:db8::1]:4787", ("2001:db8::1", 4787)),
    ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1)),          # one spelling: compressed, lower case
    ("[::ffff:192.0.2.1]:4787", ("192.0.2.1", 4787)),     # a mapped IPv4 address is IPv4
    ("[fd00:1::5]:65535", ("fd00:1::5", 65535)),
])
def test_parse_and_text_round_trip(text, want):
    assert endpoint.parse(text) == want
    assert endpoint.parse(endpoint.text(want)) == want
    assert endpoint.text(("2001:db8::1", 4787)) == "[2001:db8::1]:4787"
    assert endpoint.text(("192.0.2.1", 4787)) == "192.0.2.1:4787"


@pytest.mark.parametrize("text, words", [
    ("2001:db8::1:4787", "[ADDRESS]:PORT"),     # ambiguous without brackets
    ("[2001:db8::1]4787", "[IPV6]:PORT"),
    ("[2001:db8::1]:0", "1-65535"), ("192.0.2.1:65536", "1-65535"), ("192.0.2.1:+80", "1-65535"),
    ("192.0.2.1:٤٧", "1-65535"),                 # Unicode digits are not a port
    ("[fe80::1%eth0]:4787", "not an IP address"),  # a scope id means nothing to a peer
    ("[not-an-ip]:1", "not an IP address"), ("192.0.2.1", "HOST:PORT"), (":4787", "HOST:PORT"),
    ("lighthouse.example:4787", "not an IP address"),  # names only where allowed
    ("256.1.1.1:1", "not an IP address"),
])
def test_parse_errors_say_why(text, words):
    with pytest.raises(endpoint.EndpointError, match=words.replace("[", r"\[").replace("]", r"\]")):
        endpoint.parse(text)


def test_host_names_where_allowed():
    assert endpoint.parse("Lighthouse.Example.:4787", names=True) == ("lighthouse.example", 4787)
    for bad in ("-x.example:1", "a..b:1", "x_y.example:1", "1.2.3:1", ("a" * 64) + ".example:1", "é.example:1"):
        with pytest.raises(endpoint.EndpointError):
            endpoint.parse(bad, names=True)


@pytest.mark.parametrize("addr, why", [
    ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("255.255.255.255", "broadcast or reserved"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fec0::1", "link-local"),
    ("ff02::1", "multicast"), ("ff05::2", "multicast"),
    ("::ffff:127.0.0.1", "loopback (IPv4 inside IPv6)"), ("::ffff:169.254.169.254", "link-local (IPv4 inside IPv6)"),
    ("::127.0.0.1", "loopback (IPv4 inside IPv6)"), ("2002:7f00:1::1", "loopback (IPv4 inside IPv6)"),
    ("64:ff9b::a9fe:a9fe", "link-local (IPv4 inside IPv6)"),
    ("2001:db8::1%eth0", "not an IP address"), ("host.example", "not an IP address"),
])
def test_policy_refuses_ipv4_and_ipv6_addresses_nobody_should_be_sent_to(addr, why):
    assert endpoint.refused((addr, 4787)) == why


@pytest.mark.parametrize("addr", ["10.1.2.3", "192.168.1.5", "192.0.2.1", "203.0.113.9", "2001:db8::1",
                                  "fd00::5", "fc00::1", "2a01:4f8::1", "::ffff:10.0.0.1"])
def test_policy_allows_ordinary_lan_and_internet_addresses(addr):
    assert endpoint.refused((addr, 4787)) is None
    assert endpoint.refused((addr, 0)) == "port out of range"
    assert endpoint.refused((addr, True)) == "port out of range"


def test_usable_keeps_order_and_splits():
    kept, dropped = endpoint.usable([("2001:db8::1", 1), ("::1", 2), ("192.0.2.1", 3), ("fe80::1", 4)])
    assert kept == [("2001:db8::1", 1), ("192.0.2.1", 3)] and dropped == [("::1", 2), ("fe80::1", 4)]


# ---- attacker-reachable: the lighthouse wire's endpoint lists (protocol version 2)
def test_wire_carries_ipv6_endpoints_in_canonical_form():
    kind, msg = wire.decode(wire.encode("register", endpoints=[("2001:DB8::1", 4787), ("::ffff:192.0.2.1", 9)]))
    assert msg["endpoints"] == [("2001:db8::1", 4787), ("192.0.2.1", 9)]
    kind, msg = wire.decode(wire.encode("lease", subnet="10.87.1.0/24", network="10.87.0.0/16",
                                        observed=("2001:db8::7", 40000), ttl=60))
    assert msg["observed"] == ("2001:db8::7", 40000)


@pytest.mark.parametrize("bad", [["fe80::1%eth0", 1], ["2001:db8::1:4787", 0], ["x" * 46, 1], ["[::1]", 1],
                                 ["1.2.3.4.5", 1], ["::1", 65536], ["::1", -1], [b"::1", 1], ["::1", 1.0]])
def test_wire_refuses_malformed_endpoints_as_remote_errors(bad):
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("register", endpoints=[]).replace(b"\x90", b"\x91" + __import__("msgpack").packb(bad)))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"\[[0-9a-fA-F:.%]{0,50}\]:[0-9]{0,6}", fullmatch=True),
                 st.from_regex(r"[0-9a-zA-Z.:\-]{0,70}:[0-9]{0,6}", fullmatch=True)), st.booleans())
def test_parse_is_total_and_its_results_round_trip(text, names):
    try:
        got = endpoint.parse(text, names)
    except endpoint.EndpointError:
        return
    assert 1 <= got[1] <= 65535 and endpoint.parse(endpoint.text(got), names) == got


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.lists(st.one_of(st.text(max_size=50), st.integers(-2, 70000), st.binary(max_size=8),
                                             st.ip_addresses().map(str), st.none()), max_size=3),
                          st.tuples(st.ip_addresses().map(str), st.integers(0, 65536)).map(list),
                          st.text(max_size=10), st.integers(-(1 << 63), (1 << 64) - 1)), max_size=10))
def test_wire_endpoint_lists_decode_or_raise_remote_errors_only(items):
    import msgpack
    data = msgpack.packb({"t": "register", "v": wire.VERSION, "endpoints": items})
    try:
        kind, msg = wire.decode(data)
    except RemoteProtocolError:
        return
    for host, port in msg["endpoints"]:
        assert endpoint.address(host) == host and 0 < port < 65536  # canonical and in range
        endpoint.refused((host, port))  # the policy takes whatever decode lets through


# ---- config
BASE = '[pki]\nca = "/p/ca.crt"\ncert = "/p/a.crt"\nkey = "/p/a.key"\n[network]\nsubnet = "10.87.1.0/24"\n'


def test_config_takes_ipv6_endpoints_and_lighthouse_names():
    c = parse(BASE + '[[peers]]\nname = "b"\ncert = "/p/b.crt"\nendpoints = ["[2001:db8::2]:4787", "192.0.2.2:4787"]\n'
              'subnet = "10.87.2.0/24"\n[[lighthouses]]\nname = "lh"\ncert = "/p/lh.crt"\n'
              'endpoints = ["lh.example.org:4787", "[2001:db8::fe]:4787"]\n[resolve]\nhosts = "/etc/flatnet/hosts"\n')
    assert c.peers[0].endpoints == (("2001:db8::2", 4787), ("192.0.2.2", 4787))
    assert c.lighthouses[0].endpoints == (("lh.example.org", 4787), ("2001:db8::fe", 4787))
    assert c.hosts_file == "/etc/flatnet/hosts" and c.listen_host == "::"  # dual-stack by default


@pytest.mark.parametrize("extra, words", [
    ('[[peers]]\nname = "b"\ncert = "/p/b.crt"\nendpoints = ["b.example:4787"]\nsubnet = "10.87.2.0/24"\n',
     "peers[0].endpoints: 'b.example' is not an IP address"),
    ('[[peers]]\nname = "b"\ncert = "/p/b.crt"\nendpoints = ["2001:db8::2:4787"]\nsubnet = "10.87.2.0/24"\n',
     "write an IPv6 endpoint as [ADDRESS]:PORT"),
    ('[listen]\nhost = "any"\n', "listen.host: 'any' is not an IP address"),
])
def test_config_endpoint_errors_name_the_key(extra, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse(BASE + extra)


# ---- names: the hosts file the engine reads before the system resolver
def test_hosts_file_lookup(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n2001:db8::fe lh.lab lh2.lab  # trailing\nnot-an-ip lh.lab\n192.0.2.254 LH.lab\n"
                     "fe80::1%eth0 lh.lab\n")
    assert resolve.lookup("lh.lab", str(hosts)) == ["2001:db8::fe", "192.0.2.254"]
    assert resolve.lookup("lh.lab", str(hosts), ipv6=False) == ["192.0.2.254"]
    found, errors = resolve.endpoints((("lh2.lab", 4787), ("192.0.2.9", 1), ("2001:db8::9", 2)), str(hosts))
    assert found == [("2001:db8::fe", 4787), ("192.0.2.9", 1), ("2001:db8::9", 2)] and errors == []
    found, errors = resolve.endpoints((("nowhere.invalid", 4787),), str(tmp_path / "missing"))
    assert found == [] and "cannot read hosts file" in errors[0]
    assert resolve.has_names((("lh.lab", 1),)) and not resolve.has_names((("::1", 1),))


# ---- the dual-stack socket
def test_dual_stack_socket_and_address_helpers():
    s = udp.open_udp("::", 0, 1 << 16)
    try:
        assert s.family == socket.AF_INET6 and s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert udp.to_socket(s, ("192.0.2.1", 5)) == ("::ffff:192.0.2.1", 5)
        assert udp.to_socket(s, ("2001:db8::1", 5)) == ("2001:db8::1", 5)
        assert udp.from_socket(("::ffff:192.0.2.1", 5, 0, 0)) == ("192.0.2.1", 5)
        assert udp.from_socket(("2001:db8::1", 5, 0, 0)) == ("2001:db8::1", 5)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        s.sendto(b"x", udp.to_socket(s, peer.getsockname()))
        assert peer.recv(10) == b"x"
        peer.close()
    finally:
        s.close()
    s = udp.open_udp("127.0.0.1", 0, 1 << 16)
    assert s.family == socket.AF_INET and udp.to_socket(s, ("192.0.2.1", 5)) == ("192.0.2.1", 5)
    s.close()
    with pytest.raises(OSError, match=r"cannot listen on UDP \[2001:db8::99\]:1"):
        udp.open_udp("2001:db8::99", 1, 1 << 16)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_read_hosts_takes_any_text(text):
    for name, addrs in resolve.read_hosts(text).items():
        assert endpoint.hostname(name) == name and all(endpoint.address(a) == a for a in addrs)


_OCTET_TEXT = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "0x1", " 1", "1 ", "+1", "-1",
                                                                       "", "٣", "１", "1e2", "255", "256"]))


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.lists(_OCTET_TEXT, min_size=1, max_size=6).map(".".join), st.text(max_size=20)))
def test_ipv4_int_reads_exactly_what_ipaddress_reads(text):
    """The lighthouse's fast reader of a query's address (control.ipv4_int) accepts
    exactly the spellings ipaddress.IPv4Address accepts, with the same value, and
    those are the canonical ones (so the decoded text is kept as it came)."""
    import ipaddress
    try:
        want = int(ipaddress.IPv4Address(text))
    except ValueError:
        want = None
    try:
        got = wire.ipv4_int(text)
    except ValueError:
        got = None
    assert got == want
    if got is not None:
        assert str(ipaddress.IPv4Address(got)) == text
