"""Two hosts whose underlay has IPv6 addresses only (not one IPv4 address on it): they
lease, find each other and connect through a lighthouse reachable over IPv6 and given
by host name (a hosts file the engines read: `[resolve] hosts`), then carry a TCP
stream intact."""
import ipaddress
import time

import pytest

from flatnet.demo import LIGHTHOUSE_NAME, Lab, sh
from tests.harness.netns import RUN_PREFIX
from tests.harness.traffic import tcp_transfer
from tests.harness.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(f"{RUN_PREFIX}6", str(tmp_path_factory.mktemp("lab")), hosts=2, lighthouse=True, ipv6=True,
              lighthouse_by_name=True)
    try:
        lab.up(containers_per_host=1)
        yield lab
    finally:
        lab.down()


def test_ipv6_only_underlay_with_a_lighthouse_by_name(lab):
    a, b = lab.hosts
    # the underlay really is IPv6-only: no IPv4 address on any host's uplink
    for h in (a, b):
        assert "inet " not in sh("ip", "-4", "addr", "show", "dev", "ul0", ns=h.ns).stdout.decode()
    # the lighthouse name was found in the lab's hosts file and both hosts hold a lease
    leases = lab.lighthouse_status()["leases"]
    assert set(leases) == {a.name, b.name} and a.subnet != b.subnet
    nodes = lab.lighthouse_status()["nodes"]
    assert all(ipaddress.ip_address(e.rpartition(":")[0].strip("[]")).version == 6
               for n in nodes.values() for e in n["endpoints"])
    assert f"[{a.underlay_ip}]:4787" in nodes[a.name]["endpoints"]

    n, got, sent = tcp_transfer(a.containers[0]["ns"], b.containers[0]["ns"], b.containers[0]["ip"], 4 << 20)
    assert n == 4 << 20 and got == sent
    # relay first: a session that started relayed moves direct at the first probe (0.5 s)
    row = wait_for(lambda: (r := next(p for p in lab.peers(a) if p["name"] == b.name))["endpoint"]
                   == f"[{b.underlay_ip}]:4787" and r, 3, "host-1 reaches host-2 directly over IPv6", step=0.1)
    assert row["state"] == "established"
    lh = next(p for p in lab.peers(a) if p["name"] == "lighthouse")
    assert lh["endpoint"] == f"[{lab.lighthouse_ip}]:4787"
    with open(f"{a.dir}/hosts") as f:
        assert LIGHTHOUSE_NAME in f.read()


def lighthouse_endpoint(lab, h) -> str | None:
    """The endpoint `h`'s engine has for the lighthouse; None while its socket does not answer."""
    try:
        return next(p for p in lab.peers(h) if p["name"] == "lighthouse")["endpoint"]
    except (OSError, StopIteration):
        return None


def test_lighthouse_name_is_looked_up_again_while_it_does_not_answer(lab):
    a, _ = lab.hosts
    hosts = f"{a.dir}/hosts"
    lab.stop_engine(a)
    lab.stop_lighthouse()  # and it forgets its session with a: only a can start one
    with open(hosts, "w") as f:  # the name points nowhere (an address nobody holds)
        f.write(f"2001:db8:f1a7::99 {LIGHTHOUSE_NAME}\n")
    lab.start_lighthouse()
    lab.start_engine(a)
    lab.wait_engine(a)  # the cached lease lets it start
    # the new engine answers and has looked the name up: its lighthouse is at the address
    # nobody holds (so the unregistered below is the name's doing, not an engine not up yet)
    wait_for(lambda: lighthouse_endpoint(lab, a) == "[2001:db8:f1a7::99]:4787", 15,
             "the restarted engine's lighthouse at the address the hosts file gives")
    assert lab.status(a)["lighthouses"] == {"lighthouse": "unregistered"}
    with open(hosts, "w") as f:  # the name moves to the lighthouse's real address
        f.write(f"{lab.lighthouse_ip} {LIGHTHOUSE_NAME}\n")
    end = time.monotonic() + 20
    while time.monotonic() < end and lab.status(a)["lighthouses"] != {"lighthouse": "registered"}:
        time.sleep(0.3)
    assert lab.status(a)["lighthouses"] == {"lighthouse": "registered"}
    with open(a.log) as f:
        log = f.read()
    assert "lighthouse_resolved" in log
