import pytest

from flatnet.engine.config import ConfigError, parse

BASE = """
[pki]
ca = "/p/ca.crt"
cert = "/p/a.crt"
key = "/p/a.key"
[network]
subnet = "10.87.1.0/24"
"""


def test_defaults():
    c = parse(BASE, "/etc/flatnet/config.toml")
    assert str(c.network) == "10.87.0.0/16" and c.listen_port == 4787 and c.tun_name == "flatnet0"
    assert str(c.subnet) == "10.87.1.0/24" and c.control_socket == "/run/flatnet/engine.sock"
    assert c.dead_after == 3.0 and parse(BASE + "[liveness]\ndead_after = 5\n").dead_after == 5.0


def test_compact_cipher_is_on_unless_turned_off():
    assert parse(BASE).compact_cipher is True
    assert parse(BASE + "[tun]\ncompact_cipher = false\n").compact_cipher is False


def test_peers():
    c = parse(BASE + '[[peers]]\nname = "b"\ncert = "/p/b.crt"\nendpoints = ["192.0.2.2:4787"]\nsubnet = "10.87.2.0/24"\n')
    assert c.peers[0].endpoints == (("192.0.2.2", 4787),)


@pytest.mark.parametrize("extra, words", [
    ("[tun]\nmtu = 100\n", "tun.mtu"),
    ("[liveness]\ndead_after = 0.5\n", "liveness.dead_after: 0.5; expected seconds, 1 to 60"),
    ("[liveness]\ndead_after = \"3s\"\n", "liveness.dead_after: '3s'; expected seconds"),
    ("[liveness]\ndead_afer = 3\n", "liveness.dead_afer: unknown key"),
    ("[tun]\nmoderation_us = -1\n", "tun.moderation_us: -1 is outside 0..10000"),
    ("[tun]\nmoderation_us = 20000\n", "tun.moderation_us: 20000 is outside"),
    ("[tun]\nmoderation_us = \"fast\"\n", "tun.moderation_us: expected int"),
    ("[tun]\ncompact_cipher = \"no\"\n", "tun.compact_cipher: expected bool, got str 'no'"),
    ("[tun]\ncompact_cipher = 0\n", "tun.compact_cipher: expected bool, got int 0"),
    ("[listen]\nport = 70000\n", "listen.port"),
    ("[listne]\nport = 1\n", "unknown section"),
    ("[tun]\nmtuu = 1\n", "tun.mtuu: unknown key"),
    ("[log]\nlevel = \"loud\"\n", "log.level"),
    ("[log]\nformat = \"yaml\"\n", "log.format: 'yaml'; expected text or json"),
    ("[[peers]]\nname = \"b\"\ncert = \"x\"\nendpoints = [\"nohost\"]\nsubnet = \"10.87.2.0/24\"\n", "HOST:PORT"),
    ("[[peers]]\nname = \"b\"\ncert = \"x\"\nendpoints = [\"192.0.2.2:1\"]\nsubnet = \"10.87.1.0/24\"\n", "overlaps"),
    ("[[peers]]\nname = \"b\"\ncert = \"x\"\nendpoints = [\"192.0.2.2:1\"]\n", "peers[0].subnet: missing"),
])
def test_errors_name_file_and_key(extra, words):
    with pytest.raises(ConfigError) as info:
        parse(BASE + extra, "/etc/flatnet/config.toml")
    assert "/etc/flatnet/config.toml" in str(info.value) and words in str(info.value)


def test_subnet_must_be_inside_network():
    with pytest.raises(ConfigError, match="network.subnet"):
        parse(BASE.replace("10.87.1.0/24", "10.88.1.0/24"))


def test_not_toml():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[pki\n", "x.toml")


def test_firewall_rules():
    c = parse(BASE + '[listen]\nport = 5000\n[firewall]\ndefault = "deny"\n[[firewall.inbound]]\nproto = "tcp"\n'
                     'port = "8000-8100"\ngroups = ["web"]\ncidr = "10.87.0.0/16"\n')
    assert c.listen_port == 5000 and c.firewall_default == "deny"
    r = c.firewall_rules[0]
    assert (r.proto, r.port_lo, r.port_hi, r.groups, str(r.cidr)) == ("tcp", 8000, 8100, ("web",), "10.87.0.0/16")


@pytest.mark.parametrize("rule, words", [
    ('proto = "sctp"', "proto"), ('port = "90-80"', "port"), ('port = "x"', "port"), ('groups = "web"', "groups"),
    ('cidr = "10.87.0.1/16"', "cidr"), ('colour = "red"', "keys are"),
])
def test_firewall_errors(rule, words):
    with pytest.raises(ConfigError) as info:
        parse(BASE + f"[[firewall.inbound]]\n{rule}\n", "/etc/flatnet/config.toml")
    assert "firewall.inbound[0]" in str(info.value) and words in str(info.value)
