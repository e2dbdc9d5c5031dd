"""Relaying as an operator's choice (issue 18): the config keys on both sides, the
lease's `relay` field, and a lighthouse that does not relay."""
import pytest

from flatnet.engine.config import ConfigError, parse as engine_parse
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto import control as wire
from flatnet.lighthouse.config import parse as lighthouse_parse
from flatnet.lighthouse.leases import LeaseStore
from flatnet.lighthouse.registry import Registry

ENGINE = """
[pki]
ca = "/p/ca.crt"
cert = "/p/a.crt"
key = "/p/a.key"
[[lighthouses]]
name = "lighthouse"
cert = "/p/lh.crt"
endpoints = ["192.0.2.254:4787"]
"""
LIGHTHOUSE = '[pki]\nca = "/p/ca.crt"\n'


def test_engine_lighthouse_relay_and_tcp_port():
    lh = engine_parse(ENGINE).lighthouses[0]
    assert lh.relay is True and lh.tcp_port == 443
    lh = engine_parse(ENGINE + "relay = false\ntcp_port = 0\n").lighthouses[0]
    assert lh.relay is False and lh.tcp_port == 0
    for extra, words in (("relay = 1\n", "lighthouses[0].relay: expected true or false"),
                         ("tcp_port = 70000\n", "lighthouses[0].tcp_port: expected 0 (never) or a port"),
                         ("tcp_port = true\n", "lighthouses[0].tcp_port")):
        with pytest.raises(ConfigError) as info:
            engine_parse(ENGINE + extra, "/etc/flatnet/config.toml")
        assert words in str(info.value) and "/etc/flatnet/config.toml" in str(info.value)


def test_lighthouse_relay_section():
    c = lighthouse_parse(LIGHTHOUSE)
    assert c.relay is True and c.tcp_port == 443
    c = lighthouse_parse(LIGHTHOUSE + "[relay]\nenabled = false\ntcp_port = 8443\n")
    assert c.relay is False and c.tcp_port == 8443
    for extra, words in (("[relay]\nenabled = \"yes\"\n", "relay.enabled: expected bool"),
                         ("[relay]\ntcp_port = -1\n", "relay.tcp_port: -1 is not 0 (off) or 1-65535"),
                         ("[relay]\nport = 1\n", "relay.port: unknown key")):
        with pytest.raises(ConfigError) as info:
            lighthouse_parse(LIGHTHOUSE + extra, "/etc/flatnet/lighthouse.toml")
        assert words in str(info.value)


def test_lease_says_whether_the_lighthouse_relays_and_a_disabled_relay_forwards_nothing(tmp_path):
    reg = Registry(LeaseStore(str(tmp_path / "l.db"), __import__("ipaddress").IPv4Network("10.87.0.0/16")),
                   relay=False)
    [(_, lease)] = reg.handle("a", b"cert-a", wire.encode("register", endpoints=[]), ("192.0.2.1", 4787), 0.0)
    assert wire.decode(lease)[1]["relay"] is False
    reg.handle("b", b"cert-b", wire.encode("register", endpoints=[]), ("192.0.2.2", 4787), 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        reg.relay(b"\x05\x02\x00\x00" + (2).to_bytes(4, "little") + b"\x04" * 32, ("192.0.2.1", 4787), 0.0)
    assert info.value.reason == "relay_disabled"
    # absent (an older lighthouse): it relays; not a boolean: refused
    old = wire.encode("lease", subnet="10.87.1.0/24", network="10.87.0.0/16", observed=("192.0.2.1", 1), ttl=60)
    assert wire.decode(old)[1]["relay"] is True
    with pytest.raises(RemoteProtocolError):
        wire.decode(wire.encode("lease", subnet="10.87.1.0/24", network="10.87.0.0/16", observed=("192.0.2.1", 1),
                                ttl=60, relay=1))
