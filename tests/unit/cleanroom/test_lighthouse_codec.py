"""The clean-room lighthouse codec (tests/cleanroom/lighthouse.py, from docs/protocol.md
section 10 alone): the page's example, its field rules, and any input a counted refusal."""
from __future__ import annotations

import ipaddress
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cleanroom import lighthouse as lh
from tests.unit.cleanroom.test_peer_loopback import CA, _cert

NET = ipaddress.IPv4Network("10.87.0.0/16")


def test_the_pages_register_example() -> None:
    raw = bytes.fromhex("83 a1 74 a8 7265676973746572 a1 76 01 a9 656e64706f696e7473 91 92 aa"
                        " 3139322e302e322e3130 cd 12b3")
    assert lh.encode({"t": "register", "v": 1, "endpoints": [["192.0.2.10", 4787]]}) == raw
    assert lh.decode(raw)["endpoints"] == [["192.0.2.10", 4787]]


def test_codec_refuses_what_the_page_refuses() -> None:
    with pytest.raises(lh.ControlError, match="oversized_control"):
        lh.encode({"t": "register", "v": 1, "pad": "x" * 1400})
    for raw in (b"\xc1", msgpack.packb([1]), msgpack.packb({"t": "lease", "v": True}),
                msgpack.packb({"t": "lease", "v": 1.0}), msgpack.packb({"t": "hello", "v": 1}),
                msgpack.packb({"t": "lease", "v": 1, "x": ["a"] * 65})):  # arrays <= 64 items
        with pytest.raises(lh.ControlError, match="bad_control"):
            lh.decode(raw)
    assert lh.decode(msgpack.packb({"t": "lease", "v": 1, "zz": 3}))["t"] == "lease"  # unknown keys ignored


def test_lease_fields() -> None:
    m = {"t": "lease", "v": 1, "subnet": "10.87.3.0/24", "network": "10.87.0.0/16", "observed": ["::ffff:192.0.2.1", 9]}
    le = lh.parse_lease(m)
    assert (le.ttl, le.relay, le.relays, le.observed) == (60, True, [], ("192.0.2.1", 9))
    for bad in ({"ttl": 0}, {"ttl": 86401}, {"ttl": True}, {"relay": 1}, {"relays": [""]}, {"relays": ["r"] * 9},
                {"observed": ["192.0.2.1", 0]}, {"subnet": "10.87.3.0/24 "}, {"network": 5}):
        with pytest.raises(lh.ControlError, match="bad_control"):
            lh.parse_lease({**m, **bad})


def test_peer_checks_in_order() -> None:
    key = bytes([9] * 32)
    m = {"t": "peer", "v": 1, "name": "other", "cert": _cert("other", key), "subnet": "10.87.4.0/24",
         "endpoints": [["127.0.0.1", 1], ["192.0.2.4", 4787]], "local": []}
    p = lh.parse_peer(m, CA, "me", NET, time.time())
    assert p.endpoints == [("192.0.2.4", 4787)] and p.refused == 1  # the endpoint rule (10.4)
    for bad, reason in (({"name": "else"}, "bad_control"), ({"subnet": "10.88.0.0/24"}, "bad_control"),
                        ({"cert": b"x"}, "bad_cert"), ({"cert": "x"}, "bad_control")):
        with pytest.raises(lh.ControlError, match=reason):
            lh.parse_peer({**m, **bad}, CA, "me", NET, time.time())
    with pytest.raises(lh.ControlError, match="bad_control"):
        lh.parse_peer(m, CA, "other", NET, time.time())  # our own name


@pytest.mark.parametrize("addr,ok", [("192.0.2.1", True), ("10.0.0.1", True), ("127.0.0.1", False),
                                     ("169.254.169.254", False), ("224.0.0.1", False), ("255.255.255.255", False),
                                     ("::1", False), ("fe80::1", False), ("fd00::1", True),
                                     ("::ffff:127.0.0.1", False), ("2002:7f00:1::", False),
                                     ("64:ff9b::a9fe:a9fe", False), ("2001:db8::1", True)])
def test_endpoint_rule(addr: str, ok: bool) -> None:
    assert lh.endpoint_allowed(addr) is ok


def test_relay_id_is_the_block() -> None:
    assert lh.relay_id(ipaddress.IPv4Network("10.87.2.0/24"), NET) == 2  # the page's example (7)


_ANY = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                    | st.binary(max_size=20),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(lh.TO_NODE), st.dictionaries(st.sampled_from(
    ["subnet", "network", "observed", "ttl", "relay", "relays", "name", "cert", "endpoints", "local", "code", "msg",
     "service", "services", "next", "version", "names"]), _ANY, max_size=8))
def test_any_message_is_parsed_or_refused(t: str, fields: dict[str, object]) -> None:
    node = lh.LighthouseNode.__new__(lh.LighthouseNode)
    node.ca, node.lease = CA, None
    node.peer = type("P", (), {"name": "me", "clock": staticmethod(time.time)})()  # type: ignore[assignment]
    try:
        node._parse(msgpack.packb({**fields, "t": t, "v": 1}, use_bin_type=True))
    except lh.ControlError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_any_bytes_are_decoded_or_refused(raw: bytes) -> None:
    try:
        lh.decode(raw)
    except lh.ControlError:
        pass
