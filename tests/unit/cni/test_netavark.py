"""The netavark front end's parsing and answers (pure: no root, no namespaces)."""
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flatnet.cni import netavark
from flatnet.cni.errors import CniError
from flatnet.cni.nvconf import error_json, network_conf, parse_exec, parse_mac, status_block
from flatnet.cni.ipv4 import parse_ip, parse_subnet

NETWORK = {"name": "flatnet", "id": "ab" * 32, "driver": "flatnet", "network_interface": "flatnet-br0",
           "subnets": [{"subnet": "10.87.31.0/24", "gateway": "10.87.31.1"}], "ipv6_enabled": False,
           "internal": False, "dns_enabled": False, "options": {"subnet_source": "lease"}}


def body(**opts):
    network_options = {"aliases": ["web"], "interface_name": "eth0", "static_ips": ["10.87.31.5"]}
    network_options.update(opts)
    return {"container_id": "c0ffee" * 10, "container_name": "web", "port_mappings": None,
            "network": NETWORK, "network_options": network_options}


def call(argv, stdin: bytes):
    out, err = io.StringIO(), io.StringIO()
    rc = netavark.dispatch(["flatnet", *argv], io.BytesIO(stdin), out, err)
    return rc, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()


def test_setup_input_is_parsed():
    att = parse_exec(body(static_mac="02:aa:bb:cc:dd:01", interface_name="eth1"), setup=True)
    assert att.ip == parse_ip("10.87.31.5", "x") and att.ifname == "eth1"
    assert att.mac == bytes.fromhex("02aabbccdd01") and att.metric == 101 and att.source == "lease"
    assert att.conf.name == "flatnet" and att.conf.bridge == "flatnet-br0" and att.conf.subnet is None


def test_static_network_carries_its_subnet():
    conf = network_conf({**NETWORK, "options": {"subnet_source": "static", "mtu": "1380"}})
    assert conf.subnet == parse_subnet("10.87.31.0/24", "x") and conf.mtu == 1380


@pytest.mark.parametrize("change, message", [
    ({"static_ips": []}, "expected the one address Podman allocated"),
    ({"static_ips": ["10.87.31.5", "10.87.31.6"]}, "expected the one address"),
    ({"static_ips": ["banana"]}, "is not an IPv4 address"),
    ({"interface_name": "a/b"}, "is not a valid interface name"),
    ({"interface_name": "x" * 16}, "is not a valid interface name"),
    ({"static_mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"static_mac": "zz"}, "is not a MAC address"),
    ({"aliases": ["a"] * 65}, "at most 64 names"),
    ({"aliases": ["a\nb"]}, "printable characters"),
    ({"aliases": ["a b"]}, "no spaces"),
])
def test_bad_setup_input_is_refused_with_a_clear_message(change, message):
    with pytest.raises(CniError) as exc:
        parse_exec(body(**change), setup=True)
    assert message in exc.value.msg


@pytest.mark.parametrize("network, message", [
    ({**NETWORK, "options": {"nope": "1"}}, "unknown option 'nope'"),
    ({**NETWORK, "options": {"mtu": "99999"}}, "576..9000"),
    ({**NETWORK, "ipv6_enabled": True}, "IPv4 only"),
    ({**NETWORK, "name": "../x"}, "cannot be a directory name"),
    ({**NETWORK, "subnets": [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24"}]}, "exactly one"),
    ({**NETWORK, "subnets": [{"subnet": "10.0.0.0/31"}]}, "too small"),
    ({**NETWORK, "network_interface": "bad name"}, "not a valid interface name"),
])
def test_bad_network_is_refused(network, message):
    with pytest.raises(CniError) as exc:
        parse_exec({**body(), "network": network}, setup=True)
    assert message in exc.value.msg


def test_ports_are_refused():
    with pytest.raises(CniError, match="does not publish ports"):
        parse_exec({**body(), "port_mappings": [{"container_port": 80, "host_port": 8080}]}, setup=True)


def test_mac_parser():
    assert parse_mac("02:AA:bb:cc:dd:01") == bytes.fromhex("02aabbccdd01")
    for bad in ("00:00:00:00:00:00", "02:aa:bb:cc:dd", "02-aa-bb-cc-dd-01", None):
        with pytest.raises(CniError):
            parse_mac(bad)


def test_status_block_is_what_podman_reads():
    block = status_block("eth0", "02:aa:bb:cc:dd:01", parse_ip("10.87.31.5", "x"),
                         parse_subnet("10.87.31.0/24", "x"), parse_ip("10.87.31.1", "x"))
    assert block == {"dns_search_domains": [], "dns_server_ips": [], "interfaces": {"eth0": {
        "mac_address": "02:aa:bb:cc:dd:01", "subnets": [{"ipnet": "10.87.31.5/24", "gateway": "10.87.31.1"}]}}}
    # the engine's resolver from the lease: Podman writes it into the container's resolv.conf
    block = status_block("eth0", "02:aa:bb:cc:dd:01", parse_ip("10.87.31.5", "x"),
                         parse_subnet("10.87.31.0/24", "x"), parse_ip("10.87.31.1", "x"),
                         {"nameservers": ["10.87.31.1"], "search": ["flatnet"]})
    assert block["dns_server_ips"] == ["10.87.31.1"] and block["dns_search_domains"] == ["flatnet"]


def test_errors_are_netavark_json_with_exit_1():
    rc, out, _ = call(["setup"], b"{}")
    assert rc == 1 and "needs the network namespace path" in out["error"]
    rc, out, _ = call(["frobnicate"], b"{}")
    assert rc == 1 and "unknown subcommand 'frobnicate'" in out["error"]
    rc, out, _ = call(["setup", "/run/netns/x"], b"{nope")
    assert rc == 1 and out["error"].startswith("flatnet: input is not valid JSON")
    rc, out, _ = call(["setup", "/run/netns/x"], b"[" * 100 + b"]" * 100)
    assert rc == 1 and "nested deeper" in out["error"]
    rc, out, _ = call(["create"], b" " * (2 << 20))
    assert rc == 1 and "byte limit" in out["error"]
    assert error_json(CniError(7, "bad", "fix it")) == {"error": "flatnet: bad (fix it)"}


def test_info():
    rc, out, _ = call(["info"], b"")
    assert rc == 0 and out["api_version"] == "1.0.0" and out["version"]


def test_create_standalone_fills_gateway(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    net = {"name": "solo", "id": "cd" * 32, "driver": "flatnet", "subnets": [{"subnet": "10.87.40.0/24"}],
           "options": {"data_dir": str(tmp_path)}}
    rc, out, _ = call(["create"], json.dumps(net).encode())
    assert rc == 0, out
    assert out["subnets"] == [{"subnet": "10.87.40.0/24", "gateway": "10.87.40.1"}]
    assert out["options"]["subnet_source"] == "static" and out["network_interface"] == "flatnet-br0"
    assert out["id"] == net["id"] and out["name"] == "solo" and out["dns_enabled"] is False


def test_create_takes_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    lease = tmp_path / "lease.json"
    net = {"name": "fl", "id": "cd" * 32, "driver": "flatnet",
           "options": {"data_dir": str(tmp_path), "lease_file": str(lease)}}
    rc, out, _ = call(["create"], json.dumps(net).encode())
    assert rc == 1 and "no subnet lease" in out["error"] and "start flatnet-engine" in out["error"]
    lease.write_text('{"subnet": "10.87.9.0/24", "gateway": "10.87.9.1"}')
    rc, out, _ = call(["create"], json.dumps(net).encode())
    assert rc == 0 and out["subnets"] == [{"subnet": "10.87.9.0/24", "gateway": "10.87.9.1"}]
    assert out["options"]["subnet_source"] == "lease"


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                    max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["container_id", "container_name", "port_mappings", "network",
                                        "network_options", "x"]), JSONISH, max_size=6),
       st.booleans())
def test_fuzz_exec_input_never_escapes_as_a_traceback(raw, setup):
    try:
        parse_exec(raw, setup)
    except CniError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "container_id": st.text(max_size=10) | st.just("c0ffee"),
    "network": st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={
        "subnets": JSONISH, "options": JSONISH, "network_interface": JSONISH, "ipv6_enabled": JSONISH}),
    "network_options": st.fixed_dictionaries({}, optional={
        "interface_name": JSONISH, "static_ips": JSONISH, "static_mac": JSONISH, "aliases": JSONISH})}))
def test_fuzz_nearly_valid_input(raw):
    try:
        parse_exec(raw, True)
    except CniError:
        pass
