"""The engine (pyroute2) and the CNI plugin (cni/netlink.py) make and repair the bridge
as cni/bridge.py says: a bridge either made looks the same, the other then changes
nothing, and a bridge put wrong (no address, another MAC, down) is put right. All in a
network namespace of the test's own."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import ipaddress, json, sys
from pyroute2 import IPRoute
from flatnet.cni import bridge, netns
from flatnet.cni.ipv4 import Subnet
from flatnet.cni.netlink import Netlink
from flatnet.engine.io import netlink as engine_netlink

first, name = sys.argv[1], sys.argv[2]
gateway, subnet, mtu = ipaddress.IPv4Address("10.87.240.1"), Subnet(int(ipaddress.IPv4Address("10.87.240.0")), 24), 1400
spec = bridge.BridgeSpec(name, int(gateway), 24, mtu)

def engine():
    with IPRoute() as ipr:
        engine_netlink.ensure_bridge(ipr, name, gateway, 24, mtu)

def cni():
    with Netlink() as nl:
        netns.ensure_bridge(nl, name, subnet, int(gateway), mtu)

def left():
    with Netlink() as nl:
        link = nl.link_get(name)
        return bridge.repairs(spec, link.mac, [ip for _, ip, _ in nl.addresses(link.index)], link.up)

(engine if first == "engine" else cni)()
out = {"after_first": left()}
(cni if first == "engine" else engine)()
out["after_second"] = left()
print(json.dumps(out))
"""


def _run(ns, *args: str) -> dict:
    proc = ns.run(sys.executable, "-c", SCRIPT, *args, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _show(ns, name: str) -> tuple[dict, dict]:
    link = json.loads(ns.run("ip", "-j", "link", "show", name).stdout)[0]
    addr = json.loads(ns.run("ip", "-j", "-4", "addr", "show", name).stdout)[0]["addr_info"][0]
    return link, addr


@pytest.mark.parametrize("first", ["engine", "cni"])
def test_either_makes_the_same_bridge_and_the_other_changes_nothing(netns_factory, first):
    ns = netns_factory("br")
    assert _run(ns, first, "fnbr0") == {"after_first": [], "after_second": []}
    link, addr = _show(ns, "fnbr0")
    assert link["address"] == "02:00:0a:57:f0:01" and link["mtu"] == 1400 and "UP" in link["flags"]
    assert (addr["local"], addr["prefixlen"], addr["broadcast"]) == ("10.87.240.1", 24, "10.87.240.255")


@pytest.mark.parametrize("fixer", ["engine", "cni"])
def test_a_bridge_put_wrong_is_put_right(netns_factory, fixer):
    ns = netns_factory("br")
    ns.run("ip", "link", "add", "fnbr0", "type", "bridge")
    ns.run("ip", "link", "set", "fnbr0", "address", "02:11:22:33:44:55")
    assert _run(ns, fixer, "fnbr0") == {"after_first": [], "after_second": []}
    link, addr = _show(ns, "fnbr0")
    assert link["address"] == "02:00:0a:57:f0:01" and "UP" in link["flags"] and addr["local"] == "10.87.240.1"


def test_a_link_that_is_not_a_bridge_is_refused_by_both(netns_factory):
    ns = netns_factory("br")
    ns.run("ip", "link", "add", "fnbr0", "type", "veth", "peer", "name", "fnbr0p")
    for first in ("engine", "cni"):
        proc = ns.run(sys.executable, "-c", SCRIPT, first, "fnbr0", check=False, timeout=60)
        assert proc.returncode != 0 and "exists but is a veth device, not a bridge" in proc.stderr, proc.stderr
    assert "veth" in subprocess.run(["ip", "-n", ns.name, "-d", "link", "show", "fnbr0"],
                                     capture_output=True, text=True).stdout
