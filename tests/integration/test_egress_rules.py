"""The egress rules with the real iptables (iptables-nft on Debian 12), in a namespace
of the test's own: idempotent, `masquerade = false` empties the NAT chain, remove()
leaves nothing, and the jumps are never doubled."""
import sys

import pytest

from tests.harness.netns import Netns

pytestmark = pytest.mark.integration

CODE = """
import ipaddress, sys
from flatnet.engine.io import egress
net, sub = ipaddress.IPv4Network("10.87.0.0/16"), ipaddress.IPv4Network("10.87.5.0/24")
if sys.argv[1] == "remove":
    print(egress.remove())
else:
    egress.apply(net, sub, "flatnet-br0", "flatnet0", sys.argv[1] == "on")
"""


@pytest.fixture
def ns():
    n = Netns("egress")
    yield n
    n.delete()


def egress(ns, what):
    return ns.run(sys.executable, "-c", CODE, what).stdout


def rules(ns):
    return ns.run("iptables-save").stdout


def test_rules_are_idempotent_can_be_turned_off_and_removed(ns):
    egress(ns, "on")
    first = [l for l in rules(ns).splitlines() if l.startswith("-")]
    egress(ns, "on")
    assert [l for l in rules(ns).splitlines() if l.startswith("-")] == first
    assert first.count("-A POSTROUTING -j FLATNET-POSTROUTING") == 1
    assert first.count("-A FORWARD -j FLATNET-FORWARD") == 1
    assert "-A FLATNET-POSTROUTING -s 10.87.5.0/24 -j MASQUERADE" in first
    egress(ns, "off")
    off = rules(ns)
    assert "MASQUERADE" not in off and "-A FLATNET-FORWARD -i flatnet-br0 -j ACCEPT" in off
    assert "['nat/FLATNET-POSTROUTING', 'filter/FLATNET-FORWARD']" in egress(ns, "remove")
    assert "FLATNET" not in rules(ns)
    assert egress(ns, "remove").strip() == "[]"
