import json

import pytest

from flatnet.cni.conf import load_netconf, parse_lease
from flatnet.cni.errors import CniError
from flatnet.cni.ipv4 import format_ip


def conf(**kw) -> bytes:
    base = {"cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet"}
    base.update(kw)
    return json.dumps(base).encode()


def error_of(data: bytes) -> CniError:
    with pytest.raises(CniError) as info:
        load_netconf(data)
    return info.value


def test_defaults_use_the_engine_lease():
    c = load_netconf(conf())
    assert c.bridge == "flatnet-br0"
    assert c.subnet is None and c.lease_file == "/run/flatnet/lease.json"
    assert c.data_dir == "/var/lib/flatnet/ipam"


def test_standalone_subnet_and_default_gateway():
    c = load_netconf(conf(subnet="10.87.3.0/24", mtu=1400, bridge="br-x"))
    assert str(c.subnet) == "10.87.3.0/24"
    assert format_ip(c.gateway) == "10.87.3.1"
    assert c.mtu == 1400 and c.bridge == "br-x"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions(version):
    assert load_netconf(conf(cniVersion=version)).cni_version == version


def test_not_json_is_a_decode_error():
    err = error_of(b"{nope")
    assert err.code == 6 and "not valid JSON" in err.msg


def test_unsupported_version_is_code_1_and_lists_supported():
    err = error_of(conf(cniVersion="0.3.1"))
    assert err.code == 1 and "1.0.0" in err.msg


@pytest.mark.parametrize("kw, words", [
    ({"name": ""}, "name"),
    ({"subnet": "10.87.0.0/33"}, "prefix"),
    ({"subnet": "banana"}, "not a CIDR"),
    ({"subnet": "10.87.3.7/24"}, "host bits"),
    ({"subnet": "10.87.3.0/24", "gateway": "10.87.4.1"}, "outside subnet"),
    ({"subnet": "10.87.3.0/31"}, "too small"),
    ({"mtu": 100}, "mtu"),
    ({"mtu": "1400"}, "expected int"),
    ({"bridge": "a-very-long-bridge-name"}, "bridge"),
    ({"type": "bridge"}, "type"),
    ({"gateway": "10.87.3.1"}, "without subnet"),
])
def test_invalid_config_names_the_key(kw, words):
    err = error_of(conf(**kw))
    assert err.code == 7
    assert words in err.msg


def test_missing_name_key():
    err = error_of(json.dumps({"cniVersion": "1.0.0", "type": "flatnet"}).encode())
    assert err.code == 7 and "name" in err.msg


def test_lease_file_parsing():
    subnet, gw = parse_lease('{"subnet": "10.87.9.0/24"}', "x")
    assert str(subnet) == "10.87.9.0/24" and format_ip(gw) == "10.87.9.1"
    with pytest.raises(CniError) as info:
        parse_lease("garbage", "/run/flatnet/lease.json")
    assert info.value.code == 104 and "/run/flatnet/lease.json" in info.value.msg


def test_valid_attachments_for_gc():
    c = load_netconf(conf(**{"cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]}))
    assert c.valid_attachments == (("abc", "eth0"),)
