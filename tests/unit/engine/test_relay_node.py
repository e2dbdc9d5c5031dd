"""An engine that relays for others (engine/relay_node.py) beyond what the simulated
network shows (tests/unit/simnet/test_node_relay.py): the start-up check of its
certificate, and the device's handling of packets handed up to be forwarded."""
import io
import random

from flatnet.engine.datapath import CTRL_FORWARD, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import relay as relaying
from flatnet.engine.relay_node import certificate_problem
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import TestCA

CA = TestCA()


def test_relaying_needs_the_relay_group_and_the_error_says_how_to_get_it():
    plain = CA.identity("host-3", ["web"]).cert
    problem = certificate_problem("/etc/flatnet/config.toml", "/etc/flatnet/pki/host-3.crt", plain)
    assert problem == ('/etc/flatnet/config.toml: relay.enabled = true needs a certificate with the group "relay" '
                       "(/etc/flatnet/pki/host-3.crt has web); sign one with: "
                       "flatnet cert sign --name host-3 --groups web,relay")
    assert certificate_problem("c", "k", CA.identity("host-3", ["relay"]).cert) is None


def device():
    d = Device(CA.identity("host-1"), FakeDataPath(), lambda p, a: None, lambda: 1_700_000_000 * 10**9,
               Logger("t", stream=io.StringIO()), rng=random.Random(1))
    return d


def test_a_node_that_does_not_relay_counts_what_it_is_asked_to_forward():
    d = device()
    d.on_control([ControlItem(CTRL_FORWARD, -1, relaying.wrap(3, bytes(40)), ("192.0.2.9", 4787))], 0.0)
    assert d.errors["relay_disabled"] == 1


def test_what_is_forwarded_goes_to_the_owner_and_a_cookie_for_us_is_kept():
    d = device()
    got = []
    d.on_relay = lambda data, addr, now: got.append(data)
    other = relaying.wrap(3, bytes([3, 2, 0, 0]) + bytes(40))
    d.on_control([ControlItem(CTRL_FORWARD, -1, other, ("192.0.2.9", 4787))], 0.0)
    assert got == [other]
    index = d.indexes.allocate("host-2")  # one of our handshakes: its cookie reply is ours
    cookie = relaying.wrap(3, bytes([6, 2, 0, 0]) + index.to_bytes(4, "little") + bytes(56))
    d.on_control([ControlItem(CTRL_FORWARD, -1, cookie, ("192.0.2.9", 4787))], 0.0)
    assert got == [other]  # not forwarded: handled (and refused: no such peer, no relay allowed)
    assert d.errors["relay_refused"] == 1
