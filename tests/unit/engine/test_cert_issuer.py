"""A node certificate is checked against the CA certificate itself, not only its key
(docs/protocol.md 3.4): its "issuer" must be the CA's name, and the CA certificate
must be valid at the verification time, also for a certificate whose signature was
checked before (the VerifiedCerts cache). A daemon does not start with a CA outside
its window (docs/decisions.md). Each refusal is `bad_cert`, with a message naming
both values."""
import ipaddress

import pytest

from flatnet.engine import pki
from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import cert as certs
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.handshake import Identity
from flatnet.engine.proto.noise import generate_keypair
from tests.harness.fakedp import FakeDataPath
from tests.harness.pki import DAY, TestCA

A_ADDR, B_ADDR = ("192.0.2.1", 4787), ("192.0.2.2", 4787)


def same_key_ca(ca: TestCA, name: str | None = None, not_before: int | None = None,
                not_after: int | None = None) -> certs.Certificate:
    """Another CA certificate with the same Ed25519 key (another name or window)."""
    c = ca.cert
    return certs.load_ca(certs.create_ca(ca.key, c.name if name is None else name,
                                         c.not_before if not_before is None else not_before,
                                         c.not_after if not_after is None else not_after))


def node_raw(ca: TestCA, signer: certs.Certificate, name: str = "host-b", key: bytes | None = None) -> bytes:
    """A node certificate signed with the CA's key; "issuer" is signer.name."""
    return certs.sign_node(ca.key, signer, name, key or generate_keypair()[1], [], ca.now - DAY, ca.now + 30 * DAY)


def refused(raw: bytes, ca: certs.Certificate, now: float) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        certs.verify_node(raw, ca, now)
    assert info.value.reason == "bad_cert"
    return str(info.value)


def test_the_fixtures_and_the_cli_name_the_ca_as_issuer():
    ca = TestCA("net-1")
    assert ca.cert.issuer == "net-1" and ca.identity("host-a").cert.issuer == "net-1"
    assert certs.verify_node(ca.identity("host-a").cert.raw, ca.cert, ca.now).issuer == ca.cert.name


def test_an_issuer_other_than_the_ca_name_is_refused():
    ca = TestCA("net-1")
    raw = node_raw(ca, same_key_ca(ca, name="net-2"))  # the right key signed it
    msg = refused(raw, ca.cert, ca.now)
    assert msg == "bad_cert: certificate of 'host-b': issuer 'net-2' is not this CA ('net-1')"


def test_a_forged_certificate_is_still_reported_as_not_signed():
    ca, other = TestCA("net-1"), TestCA("net-2")
    msg = refused(node_raw(other, other.cert), ca.cert, ca.now)
    assert "is not signed by CA 'net-1'" in msg


def test_a_ca_certificate_that_expired_refuses_every_certificate():
    # the node certificate was signed under a longer CA window; the CA certificate in
    # use is shorter: the node's own window still covers `now`, the CA's does not
    ca = TestCA("net-1")
    raw = node_raw(ca, ca.cert)
    short = same_key_ca(ca, not_after=ca.now + DAY)
    assert certs.verify_node(raw, short, ca.now + DAY).name == "host-b"  # the last valid second
    msg = refused(raw, short, ca.now + DAY + 1)
    assert msg == f"bad_cert: the CA certificate 'net-1' expired at {certs._utc(ca.now + DAY)}"
    assert msg.endswith("2023-11-15 22:13:20 UTC")


def test_a_ca_certificate_not_valid_yet_refuses_every_certificate():
    ca = TestCA("net-1")
    raw = node_raw(ca, ca.cert)  # valid from ca.now - DAY
    late = same_key_ca(ca, not_before=ca.now)
    assert certs.verify_node(raw, late, ca.now).name == "host-b"
    msg = refused(raw, late, ca.now - 1)
    assert msg == "bad_cert: the CA certificate 'net-1' is not valid before 2023-11-14 22:13:20 UTC"


def test_a_time_out_of_range_is_shown_as_the_number():
    assert certs._utc(2**62) == str(2**62)


def test_a_cached_certificate_meets_the_ca_window_and_name_every_time():
    """The handshake skips the signature for bytes verified before; the CA's window and
    name are still checked (the cache is keyed by the CA key, not its certificate)."""
    ca = TestCA("net-1")
    peer = certs.verify_node(node_raw(ca, ca.cert), ca.cert, ca.now)
    me = ca.identity("host-a")
    short = Identity(me.static_private, me.cert, same_key_ca(ca, not_after=ca.now + DAY))
    short.verified.remember(short.ca, peer)
    assert short.verify_peer(peer.raw, ca.now) is peer
    with pytest.raises(RemoteProtocolError, match="the CA certificate 'net-1' expired at"):
        short.verify_peer(peer.raw, ca.now + DAY + 1)
    renamed = Identity(me.static_private, me.cert, same_key_ca(ca, name="net-2"), verified=short.verified)
    assert renamed.verified.get(renamed.ca, peer.raw) is peer  # a cache hit
    with pytest.raises(RemoteProtocolError, match=r"issuer 'net-1' is not this CA \('net-2'\)"):
        renamed.verify_peer(peer.raw, ca.now)


def write_pki(tmp_path, ca: TestCA, ca_cert: certs.Certificate) -> tuple[str, str, str]:
    me = ca.identity("host-a")
    paths = str(tmp_path / "ca.crt"), str(tmp_path / "host-a.crt"), str(tmp_path / "host-a.key")
    pki.write_public(paths[0], ca_cert.raw)
    pki.write_public(paths[1], me.cert.raw)
    pki.write_secret(paths[2], me.static_private)
    return paths


def test_a_daemon_does_not_start_with_an_expired_ca(tmp_path):
    ca = TestCA("net-1")
    paths = write_pki(tmp_path, ca, same_key_ca(ca, not_after=ca.now + DAY))
    assert pki.load_identity(*paths, ca.now).cert.name == "host-a"
    with pytest.raises(pki.PkiError) as info:
        pki.load_identity(*paths, ca.now + DAY + 1)
    assert str(info.value) == (f"{paths[0]}: bad_cert: the CA certificate 'net-1' expired at 2023-11-15 22:13:20 UTC; "
                               "no certificate it signed is valid: make a new CA and sign every node again "
                               "(flatnet ca init, flatnet cert sign)")


def test_a_daemon_does_not_start_before_its_ca_is_valid(tmp_path):
    ca = TestCA("net-1")
    paths = write_pki(tmp_path, ca, same_key_ca(ca, not_before=ca.now))
    with pytest.raises(pki.PkiError) as info:
        pki.load_identity(*paths, ca.now - 1)
    assert str(info.value) == (f"{paths[0]}: bad_cert: the CA certificate 'net-1' is not valid before 2023-11-14 22:13:20 UTC; "
                               "no certificate it signed is valid: check this host's clock")


def test_a_peer_with_another_issuer_is_refused_in_the_handshake():
    """host-b's certificate is signed by the network CA's key, for host-b's own key and
    name, but names another issuer: host-a refuses its initiation as `bad_cert` and
    sends no response."""
    ca = TestCA("net-1")
    quiet = Logger("t", stream=open("/dev/null", "w"))
    wire: list[tuple[str, bytes]] = []
    a_id, b_good = ca.identity("host-a"), ca.identity("host-b")
    b_cert = certs.decode(node_raw(ca, same_key_ca(ca, name="net-2"), key=b_good.cert.key))[0]
    b_id = Identity(b_good.static_private, b_cert, ca.cert)

    def device(ident: Identity, name: str) -> Device:
        return Device(ident, FakeDataPath(), lambda pkt, addr: wire.append((name, pkt)),
                      lambda: ca.now * 10**9, quiet)

    a, b = device(a_id, "host-a"), device(b_id, "host-b")
    a.add_peer(b_good.cert, ipaddress.IPv4Network("10.87.2.0/24"), [B_ADDR])
    pa = b.add_peer(a_id.cert, ipaddress.IPv4Network("10.87.1.0/24"), [A_ADDR])
    b.connect(pa, 0.0)
    src, init = wire.pop()
    assert src == "host-b"
    a.on_control([ControlItem(CTRL_RAW, -1, init, B_ADDR)], 0.1)
    assert a.errors["bad_cert"] == 1 and not wire  # no response

