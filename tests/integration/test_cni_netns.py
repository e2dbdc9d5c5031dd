"""The CNI plugin called directly, as a runtime would, against namespaces the test makes."""
import json
import os
import subprocess
import uuid

import pytest

from tests.harness.cni import netconf, run_plugin
from tests.harness.netns import RUN_PREFIX, leftover_links, sh

pytestmark = pytest.mark.integration


@pytest.fixture
def net(tmp_path):
    """A network of its own: unique name, bridge and IPAM dir; bridge removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    bridge = f"fb{tag}"
    conf = netconf(f"{RUN_PREFIX}{tag}", bridge=bridge, subnet="10.87.240.0/24",
                   dataDir=str(tmp_path / "ipam"))
    yield conf
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def ipam_entries(conf) -> list[str]:
    d = os.path.join(conf["dataDir"], conf["name"])
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def test_add_check_del(net, netns_factory):
    ns, c = netns_factory("c"), cid()
    rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 0, res
    address = res["ips"][0]["address"]
    ip = address.split("/")[0]
    assert address.startswith("10.87.240.") and res["ips"][0]["gateway"] == "10.87.240.1"
    assert res["interfaces"][1]["name"] == "fn-" + c[:12]
    # the namespace really has the address, the default route and an up interface
    addrs = json.loads(ns.run("ip", "-j", "-4", "addr", "show", "eth0").stdout)
    assert addrs[0]["addr_info"][0]["local"] == ip and "UP" in addrs[0]["flags"]
    assert "default via 10.87.240.1 dev eth0" in ns.run("ip", "route").stdout
    assert "UP" in ns.run("ip", "link", "show", "lo").stdout
    # the host reaches the container through the bridge
    assert sh("ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == "1"

    check = dict(net, prevResult=res)
    assert run_plugin("CHECK", check, container_id=c, netns=ns.path) == (0, None)
    ns.run("ip", "addr", "del", address, "dev", "eth0")
    rc, err = run_plugin("CHECK", check, container_id=c, netns=ns.path)
    assert rc == 1 and err["code"] == 106 and address in err["msg"]

    assert run_plugin("DEL", dict(net, prevResult=res), container_id=c, netns=ns.path) == (0, None)
    assert leftover_links("fn-" + c[:8]) == []
    assert ipam_entries(net) == []
    # DEL is idempotent: again, without CNI_NETNS, and with the namespace gone
    assert run_plugin("DEL", net, container_id=c, netns=ns.path)[0] == 0
    assert run_plugin("DEL", net, container_id=c)[0] == 0
    ns.delete()
    assert run_plugin("DEL", net, container_id=c, netns=ns.path)[0] == 0


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_every_supported_version(net, netns_factory, version):
    ns, c = netns_factory("v"), cid()
    rc, res = run_plugin("ADD", dict(net, cniVersion=version), container_id=c, netns=ns.path)
    assert rc == 0 and res["cniVersion"] == version
    assert ("version" in res["ips"][0]) == (version == "0.4.0")
    assert run_plugin("DEL", dict(net, cniVersion=version), container_id=c, netns=ns.path)[0] == 0


def test_repeated_add_keeps_the_address(net, netns_factory):
    ns, c = netns_factory("r"), cid()
    first = run_plugin("ADD", net, container_id=c, netns=ns.path)[1]["ips"][0]["address"]
    rc, again = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 0 and again["ips"][0]["address"] == first
    assert len(ipam_entries(net)) == 1
    run_plugin("DEL", net, container_id=c, netns=ns.path)


def test_subnet_exhausted_leaves_nothing(net, netns_factory):
    small = dict(net, subnet="10.87.241.0/30")  # .1 gateway, .2 the only container address
    ns1, ns2, c1, c2 = netns_factory("a"), netns_factory("b"), cid(), cid()
    assert run_plugin("ADD", small, container_id=c1, netns=ns1.path)[0] == 0
    rc, err = run_plugin("ADD", small, container_id=c2, netns=ns2.path)
    assert rc == 1 and err["code"] == 101 and "exhausted" in err["msg"]
    assert leftover_links("fn-" + c2[:8]) == [] and len(ipam_entries(small)) == 1
    assert "eth0" not in ns2.run("ip", "link").stdout
    run_plugin("DEL", small, container_id=c1, netns=ns1.path)


def test_bridge_name_taken_by_a_non_bridge(net, netns_factory):
    peer = net["bridge"] + "p"
    sh("ip", "link", "add", net["bridge"], "type", "veth", "peer", "name", peer)
    ns, c = netns_factory("b"), cid()
    rc, err = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 1 and err["code"] == 102
    assert "not a bridge" in err["msg"] and "ip link del" in err["details"]
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_missing_netns_path(net):
    rc, err = run_plugin("ADD", net, container_id=cid(), netns=f"/run/netns/{RUN_PREFIX}-absent")
    assert rc == 1 and err["code"] == 3 and "does not exist" in err["msg"]
    assert ipam_entries(net) == []


def test_veth_failure_rolls_back_the_address(net, netns_factory):
    ns, c = netns_factory("e"), cid()
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")  # name taken
    rc, err = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 1 and err["code"] == 103 and "eth0" in err["details"]
    assert ipam_entries(net) == [] and leftover_links("fn-" + c[:8]) == []


def test_bad_config_and_version(net, netns_factory):
    ns = netns_factory("x")
    assert run_plugin("ADD", b"{not json", container_id=cid(), netns=ns.path)[1]["code"] == 6
    assert run_plugin("ADD", dict(net, cniVersion="0.2.0"), container_id=cid(), netns=ns.path)[1]["code"] == 1
    rc, err = run_plugin("ADD", dict(net, subnet="10.87.1.0/24", gateway="10.9.9.9"),
                         container_id=cid(), netns=ns.path)
    assert rc == 1 and err["code"] == 7 and "gateway" in err["msg"]


def test_not_root_is_refused(net, netns_factory):
    ns = netns_factory("u")
    rc, err = run_plugin("ADD", net, container_id=cid(), netns=ns.path, user=65534)
    assert rc == 1 and err["code"] == 100 and "root" in err["msg"]


def test_lease_mode_status_and_cached_lease(net, netns_factory, tmp_path):
    lease = tmp_path / "lease.json"
    conf = {k: v for k, v in net.items() if k != "subnet"}
    conf["leaseFile"] = str(lease)
    rc, err = run_plugin("STATUS", conf)
    assert rc == 1 and err["code"] == 50 and "flatnet-engine" in err["details"]
    lease.write_text(json.dumps({"subnet": "10.87.242.0/24", "gateway": "10.87.242.1"}))
    assert run_plugin("STATUS", conf) == (0, None)
    ns, c = netns_factory("l"), cid()
    rc, res = run_plugin("ADD", conf, container_id=c, netns=ns.path)
    assert rc == 0 and res["ips"][0]["address"].startswith("10.87.242.")
    run_plugin("DEL", conf, container_id=c, netns=ns.path)
    lease.unlink()  # engine down (or rebooted /run): the last lease still serves
    ns2, c2 = netns_factory("l"), cid()
    rc, res = run_plugin("ADD", conf, container_id=c2, netns=ns2.path)
    assert rc == 0 and res["ips"][0]["address"].startswith("10.87.242.")
    run_plugin("DEL", conf, container_id=c2, netns=ns2.path)


def test_gc_frees_stale_attachments(net, netns_factory):
    a, b = netns_factory("g"), netns_factory("g")
    ca, cb = cid(), cid()
    run_plugin("ADD", net, container_id=ca, netns=a.path)
    run_plugin("ADD", net, container_id=cb, netns=b.path)
    gc = dict(net, **{"cni.dev/valid-attachments": [{"containerID": ca, "ifname": "eth0"}]})
    assert run_plugin("GC", gc, ifname="") == (0, None)
    assert len(ipam_entries(net)) == 1
    assert leftover_links("fn-" + cb[:12]) == [] and leftover_links("fn-" + ca[:12]) != []
    run_plugin("DEL", net, container_id=ca, netns=a.path)


def bridge_mac_of(name: str) -> str:
    return json.loads(sh("ip", "-j", "link", "show", name).stdout)[0]["address"]


def test_the_bridge_address_stays_while_containers_come_and_go(net, netns_factory):
    """A bridge left to itself takes the lowest MAC of its ports and changes it as veths
    come and go; containers then send to a stale gateway MAC for up to ~30 s (seen in
    the soak). The plugin fixes it to 02:00 + the gateway address."""
    added = []
    for i in range(4):
        ns, c = netns_factory(f"m{i}"), cid()
        rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)
        assert rc == 0, res
        added.append((ns, c, res))
        assert bridge_mac_of(net["bridge"]) == "02:00:0a:57:f0:01"
    first_ns = added[0][0]
    for ns, c, res in added[1:]:
        assert run_plugin("DEL", dict(net, prevResult=res), container_id=c, netns=ns.path) == (0, None)
        assert bridge_mac_of(net["bridge"]) == "02:00:0a:57:f0:01"
        # the first container still reaches its gateway with what its ARP cache holds
        assert first_ns.run("ping", "-c", "1", "-W", "1", "10.87.240.1", check=False).returncode == 0


def test_a_bridge_from_an_older_version_gets_its_address_fixed(net, netns_factory):
    sh("ip", "link", "add", net["bridge"], "type", "bridge")
    ns, c = netns_factory("o"), cid()
    rc, res = run_plugin("ADD", net, container_id=c, netns=ns.path)
    assert rc == 0, res
    assert bridge_mac_of(net["bridge"]) == "02:00:0a:57:f0:01"


@pytest.mark.parametrize("shared", [8, 12])
def test_ids_sharing_a_prefix_keep_their_own_veth(net, netns_factory, shared):
    """Issue 13 item 8: two containers whose ids shared their first 8 characters got the
    same host veth name (fn-<8>): the second ADD deleted the first container's veth. Now
    each host veth carries its owner (alias) and the name falls back to the id's last 12
    characters when the first 12 are taken; DEL removes only its own veth."""
    prefix = uuid.uuid4().hex[:shared]  # unique per run: parallel runs never share it
    ca, cb = prefix + cid()[shared:], prefix + cid()[shared:]
    na, nb = netns_factory("p"), netns_factory("q")
    rc, ra = run_plugin("ADD", net, container_id=ca, netns=na.path)
    assert rc == 0, ra
    rc, rb = run_plugin("ADD", net, container_id=cb, netns=nb.path)
    assert rc == 0, rb
    ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (ra, rb))

    def reaches(ns, ip):  # any of three answers (a busy machine may lose the first to ARP)
        return ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", ip, check=False).returncode == 0

    # both containers work at once: each reaches the gateway and the other
    assert reaches(na, "10.87.240.1") and reaches(nb, "10.87.240.1")
    assert reaches(na, ip_b) and reaches(nb, ip_a)
    host_a, host_b = ra["interfaces"][1]["name"], rb["interfaces"][1]["name"]
    assert host_a != host_b and len(host_a) <= 15 and len(host_b) <= 15
    assert run_plugin("CHECK", dict(net, prevResult=ra), container_id=ca, netns=na.path) == (0, None)
    assert run_plugin("CHECK", dict(net, prevResult=rb), container_id=cb, netns=nb.path) == (0, None)

    # DEL of one (twice: idempotent) leaves the other's veth and connectivity intact
    assert run_plugin("DEL", dict(net, prevResult=rb), container_id=cb, netns=nb.path) == (0, None)
    assert run_plugin("DEL", net, container_id=cb)[0] == 0
    assert leftover_links(host_b) == [] and leftover_links(host_a) == [host_a]
    assert reaches(na, "10.87.240.1")
    assert run_plugin("CHECK", dict(net, prevResult=ra), container_id=ca, netns=na.path) == (0, None)
    assert run_plugin("DEL", dict(net, prevResult=ra), container_id=ca, netns=na.path) == (0, None)
    assert leftover_links(host_a) == [] and ipam_entries(net) == []
