"""The netavark plugin called directly, as netavark would, against namespaces the test makes."""
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.harness.cni import REPO
from tests.harness.netns import RUN_PREFIX, leftover_links, sh

pytestmark = pytest.mark.integration


def plugin(*argv: str, stdin: dict) -> tuple[int, dict | None]:
    proc = subprocess.run([sys.executable, "-m", "flatnet.cni.netavark", *argv], input=json.dumps(stdin).encode(),
                          capture_output=True, timeout=30, cwd=REPO,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO})
    out = proc.stdout.decode().strip()
    assert "Traceback" not in proc.stderr.decode()
    return proc.returncode, (json.loads(out) if out else None)


@pytest.fixture
def network(tmp_path):
    tag = uuid.uuid4().hex[:6]
    net = {"name": f"{RUN_PREFIX}{tag}", "id": "ab" * 32, "driver": "flatnet", "network_interface": f"fv{tag}",
           "subnets": [{"subnet": "10.87.238.0/24"}], "options": {"data_dir": str(tmp_path / "ipam")}}
    rc, created = plugin("create", stdin=net)
    assert rc == 0, created
    yield created
    subprocess.run(["ip", "link", "del", net["network_interface"]], capture_output=True)


def exec_body(network, cid, ip="10.87.238.9", ifname="eth0", **opts):
    return {"container_id": cid, "container_name": "t", "port_mappings": None, "network": network,
            "network_options": {"interface_name": ifname, "static_ips": [ip], "aliases": [], **opts}}


def entries(network) -> list[str]:
    d = os.path.join(network["options"]["data_dir"], network["name"])
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def test_setup_and_teardown(network, netns_factory):
    ns, cid = netns_factory("nv"), uuid.uuid4().hex * 2
    rc, out = plugin("setup", ns.path, stdin=exec_body(network, cid, static_mac="02:12:34:56:78:9a"))
    assert rc == 0, out
    assert out["interfaces"]["eth0"] == {"mac_address": "02:12:34:56:78:9a", "subnets": [
        {"ipnet": "10.87.238.9/24", "gateway": "10.87.238.1"}]}
    assert "inet 10.87.238.9/24" in ns.run("ip", "-4", "addr", "show", "eth0").stdout
    assert "default via 10.87.238.1 dev eth0 metric 100" in ns.run("ip", "route").stdout
    assert entries(network) == ["10.87.238.9"] and leftover_links("fn-" + cid[:12])
    assert sh("ping", "-c", "1", "-W", "2", "10.87.238.9", check=False).returncode == 0
    for _ in range(2):  # teardown is idempotent
        rc, out = plugin("teardown", ns.path, stdin=exec_body(network, cid))
        assert rc == 0 and out is None
    assert entries(network) == [] and not leftover_links("fn-" + cid[:12])


def test_failure_after_the_veth_exists_is_undone(network, netns_factory):
    """The kernel refuses the container's default route (one with the plugin's metric is
    already there): the veth pair and the store entry made before it are removed."""
    ns, cid = netns_factory("nvf"), uuid.uuid4().hex * 2
    ns.run("ip", "route", "add", "default", "dev", "lo", "metric", "100")
    rc, out = plugin("setup", ns.path, stdin=exec_body(network, cid))
    assert rc == 1 and out["error"].startswith("flatnet: cannot configure eth0 in the container"), out
    assert entries(network) == [] and not leftover_links("fn-" + cid[:12])
    assert "eth0" not in ns.run("ip", "link").stdout


def test_address_of_another_container_is_refused(network, netns_factory):
    ns1, ns2 = netns_factory("nva"), netns_factory("nvb")
    a, b = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    assert plugin("setup", ns1.path, stdin=exec_body(network, a))[0] == 0
    rc, out = plugin("setup", ns2.path, stdin=exec_body(network, b))
    assert rc == 1 and f"already held by container {a[:12]}/eth0" in out["error"]
    assert entries(network) == ["10.87.238.9"] and not leftover_links("fn-" + b[:12])
    assert plugin("teardown", ns1.path, stdin=exec_body(network, a))[0] == 0


def test_lease_change_is_reported(tmp_path, netns_factory):
    lease = tmp_path / "lease.json"
    lease.write_text('{"subnet": "10.87.236.0/24", "gateway": "10.87.236.1"}')
    tag = uuid.uuid4().hex[:6]
    rc, net = plugin("create", stdin={"name": f"{RUN_PREFIX}{tag}", "id": "ab" * 32, "driver": "flatnet",
                                      "network_interface": f"fl{tag}",
                                      "options": {"data_dir": str(tmp_path / "ipam"), "lease_file": str(lease)}})
    assert rc == 0, net
    lease.write_text('{"subnet": "10.87.237.0/24", "gateway": "10.87.237.1"}')
    ns = netns_factory("nvl")
    rc, out = plugin("setup", ns.path, stdin=exec_body(net, uuid.uuid4().hex, ip="10.87.236.5"))
    assert rc == 1 and "this host's lease is now 10.87.237.0/24" in out["error"]
    assert "podman network rm" in out["error"]


def test_setup_names_the_engines_resolver_from_the_lease(tmp_path, netns_factory):
    """A lease-based network: setup's StatusBlock carries the lease's `dns` (the engine's
    resolver on the gateway address), which Podman writes into resolv.conf. A lease
    without `dns` (the engine serves no names) and a standalone network give none."""
    lease = tmp_path / "lease.json"
    lease.write_text('{"subnet": "10.87.235.0/24", "gateway": "10.87.235.1", '
                     '"dns": {"nameservers": ["10.87.235.1"], "search": ["flatnet"]}}')
    tag = uuid.uuid4().hex[:6]
    rc, net = plugin("create", stdin={"name": f"{RUN_PREFIX}{tag}", "id": "ab" * 32, "driver": "flatnet",
                                      "network_interface": f"fd{tag}",
                                      "options": {"data_dir": str(tmp_path / "ipam"), "lease_file": str(lease)}})
    assert rc == 0, net
    try:
        ns, cid = netns_factory("nvd"), uuid.uuid4().hex * 2
        for lease_dns, want in ((True, (["10.87.235.1"], ["flatnet"])), (False, ([], []))):
            if not lease_dns:
                lease.write_text('{"subnet": "10.87.235.0/24", "gateway": "10.87.235.1"}')
            rc, out = plugin("setup", ns.path, stdin=exec_body(net, cid, ip="10.87.235.7"))
            assert rc == 0, out
            assert (out["dns_server_ips"], out["dns_search_domains"]) == want
            assert plugin("teardown", ns.path, stdin=exec_body(net, cid))[0] == 0
    finally:
        subprocess.run(["ip", "link", "del", f"fd{tag}"], capture_output=True)


def test_standalone_network_names_no_resolver(network, netns_factory):
    ns, cid = netns_factory("nvs"), uuid.uuid4().hex * 2
    rc, out = plugin("setup", ns.path, stdin=exec_body(network, cid))
    assert rc == 0, out
    assert out["dns_server_ips"] == [] and out["dns_search_domains"] == []
    assert plugin("teardown", ns.path, stdin=exec_body(network, cid))[0] == 0
