"""A peer's firewall groups and relay right come from the certificate it presented in
the handshake of its current session (docs/protocol.md section 11), not from the one
this host was configured with or first saw. Both sides (responder and initiator) take
it when the handshake is authenticated and fresh, and set the data path's group bits
before the new receive key: no packet under the new keys meets the old groups. A
replayed old initiation, a revoked certificate, or one for another key changes nothing.

Two Devices over a list as the wire, each with the fake data path (no root)."""
import ipaddress

import pytest

from flatnet.engine.datapath import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import cert as certs, revocation as rv
from flatnet.engine.proto.handshake import Identity
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import DAY, TestCA

A_ADDR, B_ADDR = ("192.0.2.1", 4787), ("192.0.2.2", 4787)
DB = 1  # the firewall bit of group "db"


def renewed(ca: TestCA, ident: Identity, groups: list[str], later: int = 60) -> Identity:
    """`flatnet cert renew --groups`: a new certificate for the same name and key."""
    raw = certs.sign_node(ca.key, ca.cert, ident.cert.name, ident.cert.key, groups, ca.now - DAY + later,
                          ca.now + 30 * DAY)
    return Identity(ident.static_private, certs.decode(raw)[0], ca.cert, ident.revocations)


class Net:
    """host-a (the Device under test, running all along) and host-b (restarted at will:
    a new Device with the same key and another certificate)."""

    def __init__(self, b_groups: list[str]) -> None:
        self.ca = TestCA()
        self.now = 0.0  # monotonic seconds; wall-clock time (TAI64N) moves with it
        self.wire: list[tuple[str, bytes]] = []
        self.calls: list[str] = []
        self.revocations = rv.Revocations(self.ca.cert)  # host-a's blocklist (empty)
        a_id = self.ca.identity("host-a")
        self.a_id = Identity(a_id.static_private, a_id.cert, a_id.ca, self.revocations)
        self.b_id = self.ca.identity("host-b", groups=b_groups)
        self.a = self._device(self.a_id, "host-a", self.calls)
        self.a.group_bits = {"db": DB}
        self.peer_b = self.a.add_peer(self.b_id.cert, ipaddress.IPv4Network("10.87.2.0/24"), [B_ADDR])
        self.b = self.start_b(self.b_id)

    def _device(self, ident: Identity, name: str, calls: list | None = None) -> Device:
        quiet = Logger("t", stream=open("/dev/null", "w"))
        return Device(ident, FakeDataPath(calls=calls), lambda pkt, addr: self.wire.append((name, pkt)),
                      lambda: int((self.ca.now + self.now) * 10**9), quiet)

    def start_b(self, ident: Identity) -> Device:
        """host-b (re)started with this identity; it holds host-a's configured certificate."""
        self.b_id = ident
        self.b = self._device(ident, "host-b")
        self.peer_a = self.b.add_peer(self.a_id.cert, ipaddress.IPv4Network("10.87.1.0/24"), [A_ADDR])
        return self.b

    def a_groups(self) -> int:
        return self.a.dp.slots[self.peer_b.slot].groups

    def b_initiates(self, now: float) -> bytes:
        """host-b's initiation reaches host-a; returns it (for a replay)."""
        self.now = now
        self.b.connect(self.peer_a, now)
        src, init = self.wire.pop()
        assert src == "host-b"
        self.a.on_control([ControlItem(CTRL_RAW, -1, init, B_ADDR)], now)
        src, resp = self.wire.pop(0)
        assert src == "host-a"
        self.b.on_control([ControlItem(CTRL_RAW, -1, resp, A_ADDR)], now)
        del self.wire[:]  # host-b's keepalive that confirms the keys
        return init

    def a_initiates(self, now: float) -> None:
        self.now = now
        self.a.rehandshake(self.peer_b, now)
        src, init = self.wire.pop()
        assert src == "host-a"
        self.b.on_control([ControlItem(CTRL_RAW, -1, init, A_ADDR)], now)
        src, resp = self.wire.pop()
        assert src == "host-b"
        del self.calls[:]
        self.a.on_control([ControlItem(CTRL_RAW, -1, resp, B_ADDR)], now)
        del self.wire[:]


def test_a_group_removed_in_a_renewed_certificate_is_gone_after_the_peers_next_handshake():
    net = Net(["db", "web"])
    net.b_initiates(1.0)
    assert net.a_groups() == DB  # the positive twin: the first session has "db"
    net.start_b(renewed(net.ca, net.b_id, ["web"]))  # host-b restarted: same name, key and address
    del net.calls[:]
    net.b_initiates(2.0)  # host-a is the responder
    assert net.a_groups() == 0
    assert net.peer_b.cert.groups == ("web",) and net.peer_b.cert.fingerprint == net.b_id.cert.fingerprint
    # the new groups are in the data path before the receive key of the new session
    assert net.calls.index("set_peer_groups") < net.calls.index("add_rx"), net.calls
    assert net.a.peer_table(2.0)[0]["groups"] == ["web"]


def test_a_group_added_in_a_renewed_certificate_applies_on_the_initiator_side_too():
    net = Net([])
    net.b_initiates(1.0)
    assert net.a_groups() == 0
    net.start_b(renewed(net.ca, net.b_id, ["db"]))
    net.a_initiates(2.0)  # host-a is the initiator: the certificate comes in the response
    assert net.a_groups() == DB and net.peer_b.cert.groups == ("db",)
    assert net.calls.index("set_peer_groups") < net.calls.index("add_rx") < net.calls.index("set_tx_key"), net.calls


def test_the_relay_right_follows_the_presented_certificate():
    net = Net(["relay"])
    net.b_initiates(1.0)
    assert net.a.relay_allowed(B_ADDR)  # the positive twin
    net.start_b(renewed(net.ca, net.b_id, []))
    net.b_initiates(2.0)
    assert not net.a.relay_allowed(B_ADDR)
    net.start_b(renewed(net.ca, net.b_id, ["relay"], later=120))
    net.a_initiates(3.0)
    assert net.a.relay_allowed(B_ADDR)


def test_a_replayed_old_initiation_does_not_bring_the_old_groups_back():
    net = Net(["db"])
    old_init = net.b_initiates(1.0)
    net.start_b(renewed(net.ca, net.b_id, []))
    net.b_initiates(2.0)
    assert net.a_groups() == 0
    net.a.on_control([ControlItem(CTRL_RAW, -1, old_init, B_ADDR)], 3.0)  # counted, not raised
    assert net.a.errors["replayed_initiation"] == 1
    assert net.a_groups() == 0 and net.peer_b.cert.groups == ()


def test_a_revoked_renewed_certificate_is_refused_and_changes_nothing():
    net = Net(["db"])
    net.b_initiates(1.0)
    assert net.a_groups() == DB
    new_b = renewed(net.ca, net.b_id, ["db", "web"])
    assert net.revocations.offer(rv.create(net.ca.key, net.ca.cert, 1, net.ca.now, {}, [new_b.cert.fingerprint]))
    net.start_b(new_b)
    del net.calls[:]
    net.now = 2.0
    net.b.connect(net.peer_a, 2.0)
    src, init = net.wire.pop()
    net.a.on_control([ControlItem(CTRL_RAW, -1, init, B_ADDR)], 2.0)
    assert net.a.errors["revoked_cert"] == 1 and not net.wire  # no response
    # host-a initiates: host-b answers with the revoked certificate
    net.now = 3.0
    net.a.rehandshake(net.peer_b, 3.0)
    src, init = net.wire.pop()
    net.b.on_control([ControlItem(CTRL_RAW, -1, init, A_ADDR)], 3.0)
    src, resp = net.wire.pop()
    assert src == "host-b"
    net.a.on_control([ControlItem(CTRL_RAW, -1, resp, B_ADDR)], 3.0)
    assert net.a.errors["revoked_cert"] == 2
    assert "set_peer_groups" not in net.calls and "add_rx" not in net.calls, net.calls
    assert net.peer_b.cert.fingerprint != new_b.cert.fingerprint and net.a_groups() == DB


def test_a_certificate_of_the_same_name_for_another_key_is_refused():
    net = Net(["db"])
    net.b_initiates(1.0)
    impostor = net.ca.identity("host-b", groups=[])  # CA-signed, same name, another key
    net.start_b(impostor)
    net.now = 2.0
    net.b.connect(net.peer_a, 2.0)
    src, init = net.wire.pop()
    net.a.on_control([ControlItem(CTRL_RAW, -1, init, B_ADDR)], 2.0)
    assert net.a.errors["bad_cert"] == 1 and net.a_groups() == DB


@pytest.mark.parametrize("groups", [["db"], []])
def test_reapplying_rules_keeps_the_session_certificates_groups(groups):
    """A SIGHUP re-applies the rules (Device.apply_groups): from the certificate of the
    current session, not the configured file."""
    net = Net(["db"] if not groups else [])
    net.b_initiates(1.0)
    net.start_b(renewed(net.ca, net.b_id, groups))
    net.b_initiates(2.0)
    net.a.group_bits = {"web": 1, "db": 2}
    net.a.apply_groups(net.peer_b)
    assert net.a_groups() == (2 if groups else 0)


def test_a_newer_blocklist_revoking_the_session_certificate_ends_the_session_at_once():
    """The live teardown (Device.apply_revocations) checks the certificate of the current
    session: revoking only the renewed certificate by fingerprint removes the peer now,
    not at its next handshake."""
    net = Net(["db"])
    net.b_initiates(1.0)
    net.start_b(renewed(net.ca, net.b_id, ["db"]))
    net.b_initiates(2.0)
    assert net.revocations.offer(rv.create(net.ca.key, net.ca.cert, 1, net.ca.now, {}, [net.b_id.cert.fingerprint]))
    assert net.a.apply_revocations(3.0) == ["host-b"] and "host-b" not in net.a.peers
