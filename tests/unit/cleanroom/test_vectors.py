"""The clean-room peer (tests/cleanroom) reproduces docs/protocol.md section 14.

The vectors are read from the page itself, so this test fails when the page and the
clean-room reading of it disagree."""
from __future__ import annotations

import os
import re

import msgpack
import pytest

from tests.cleanroom import certs, noise, prims
from tests.cleanroom.transport import ReplayWindow, Session

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "protocol.md")


def _vectors() -> dict[str, str]:
    text = open(DOC, encoding="utf-8").read()
    block = text.split("<!-- BEGIN VECTORS")[1].split("<!-- END VECTORS")[0]
    out: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.startswith("    "):
            out[name] += line.strip()
    return out


V = _vectors()


def b(name: str) -> bytes:
    return bytes.fromhex(V[name])


def test_block_parsed() -> None:
    assert V["protocol_version"] == "2"
    assert b("noise_prologue") == noise.PROLOGUE
    assert len(V) >= 50


def test_ca_and_key_files() -> None:
    seed = b("ca_ed25519_seed")
    pub, _ = prims.ed25519_seed_keypair(seed)
    assert pub == b("ca_ed25519_public")
    assert certs.key_file_text(seed) == b("ca_key_file")
    assert certs.read_key_text(b("a_key_file")) == b("a_static_private")
    assert certs.read_key_text(b"  " + b("a_key_file").upper() + b"  ") == b("a_static_private")
    ca = certs.load_ca(b("ca_crt"))
    assert ca.key == pub and ca.name == "vector-ca" and ca.ca and ca.groups == ()


def _details(name: str, key: bytes, groups: list[str], nb: int, na: int, ca: bool) -> dict[str, object]:
    # the order of the table in 3.2
    return {"name": name, "key": key, "groups": groups, "not_before": nb, "not_after": na,
            "issuer": "vector-ca", "ca": ca}


def test_certificates_reencoded_and_signed() -> None:
    seed = b("ca_ed25519_seed")
    ca_pub = b("ca_ed25519_public")
    nb, na = 1767225600, 1798761600  # 2026-01-01, 2027-01-01
    assert certs.encode(_details("vector-ca", ca_pub, [], nb, 2082758400, True), seed) == b("ca_crt")
    a_pub = prims.x25519_public(b("a_static_private"))
    assert a_pub == b("a_static_public")
    assert prims.x25519_public(b("b_static_private")) == b("b_static_public")
    assert certs.encode(_details("host-a", a_pub, ["web"], nb, na, False), seed) == b("a_crt")
    assert certs.encode(_details("host-b", b("b_static_public"), ["db", "ops"], nb, na, False), seed) == b("b_crt")
    ca = certs.load_ca(b("ca_crt"))
    a = certs.verify_node(b("a_crt"), ca, 1780000000)
    assert (a.name, a.key, a.groups) == ("host-a", a_pub, ("web",))
    assert a.fingerprint == V["a_fingerprint"]
    c = certs.verify_node(b("c_crt"), ca, 1780000000)
    assert c.fingerprint == V["c_fingerprint"]
    with pytest.raises(certs.CertError):
        certs.verify_node(b("a_crt"), ca, na + 1)  # not_after is inclusive: one past it fails
    certs.verify_node(b("a_crt"), ca, na)
    with pytest.raises(certs.CertError):
        certs.verify_node(b("ca_crt"), ca, 1780000000)  # a CA cannot identify a node


def test_issuer_and_ca_window() -> None:
    """3.4 steps 5 and 6: "issuer" is the CA's name; the CA certificate is valid too."""
    seed = b("ca_ed25519_seed")
    ca = certs.load_ca(b("ca_crt"))
    other = {**_details("host-a", b("a_static_public"), [], 1767225600, 1798761600, False), "issuer": "other-ca"}
    with pytest.raises(certs.CertError, match="issuer 'other-ca' is not this CA"):
        certs.verify_node(certs.encode(other, seed), ca, 1780000000)
    # the same CA key, a CA certificate that ends before the node's own window
    short = certs.load_ca(certs.encode(_details("vector-ca", b("ca_ed25519_public"), [], 1767225600, 1770000000,
                                                True), seed))
    certs.verify_node(b("a_crt"), short, 1770000000)
    with pytest.raises(certs.CertError, match="the CA certificate is not valid now"):
        certs.verify_node(b("a_crt"), short, 1770000001)


def test_blocklist() -> None:
    ca = certs.load_ca(b("ca_crt"))
    bl = certs.verify_blocklist(b("blocklist"), ca)
    assert bl.serial == 1 and bl.names == {"host-d": 1779998999}
    assert bl.fingerprints == (b("c_fingerprint"),)
    assert bl.revokes(certs.parse(b("c_crt"))) and not bl.revokes(certs.parse(b("a_crt")))
    bad = bytearray(b("blocklist"))
    bad[-1] ^= 1
    with pytest.raises(certs.CertError):
        certs.verify_blocklist(bytes(bad), ca)


def test_tai64n() -> None:
    assert noise.tai64n(int(V["handshake_unix_ns"])) == b("tai64n")
    assert noise.tai64n(1780000000_123456789).hex() == "400000006a18a50a075bcd15"  # 5.3 example


def _handshake(offer: list[str] | None, chosen: str | None) -> tuple[noise.Handshake, noise.Handshake,
                                                                      bytes, bytes]:
    a_idx, b_idx = int(V["a_sender_index"], 16), int(V["b_sender_index"], 16)
    ini = noise.Handshake(True, b("a_static_private"), b("b_static_public"))
    p1 = noise.initiation_payload(b("a_crt"), b("tai64n"), offer)
    pkt1 = noise.initiation(a_idx, ini.write_message1(p1, b("a_ephemeral_private")), b("b_static_public"), None)
    resp = noise.Handshake(False, b("b_static_private"))
    sidx, m1 = noise.split_initiation(pkt1, b("b_static_public"))
    assert sidx == a_idx
    got = noise.parse_initiation_payload(resp.read_message1(m1))
    assert resp.rs == b("a_static_public") and got.cert == b("a_crt") and got.offer == offer
    p2 = noise.response_payload(b("b_crt"), chosen)
    pkt2 = noise.response(b_idx, a_idx, resp.write_message2(p2, b("b_ephemeral_private")), b("a_static_public"),
                          None)
    s, r, m2 = noise.split_response(pkt2, b("a_static_public"))
    assert (s, r) == (b_idx, a_idx)
    cert, ch = noise.parse_response_payload(ini.read_message2(m2))
    assert cert == b("b_crt") and ch == chosen
    return ini, resp, pkt1, pkt2


def test_handshake_chacha() -> None:
    assert noise.initiation_payload(b("a_crt"), b("tai64n")) == b("initiation_payload")
    assert noise.response_payload(b("b_crt")) == b("response_payload")
    ini, resp, pkt1, pkt2 = _handshake(None, None)
    assert pkt1 == b("initiation")
    assert pkt2 == b("response")
    assert ini.sym.h == resp.sym.h == b("handshake_hash")
    assert ini.keys() == (b("initiator_send_key"), b("initiator_receive_key"))
    assert resp.keys() == (b("initiator_receive_key"), b("initiator_send_key"))
    assert noise.cipher_of_response(None, None) == prims.CHACHA


def test_handshake_aead_offer() -> None:
    offer = [prims.AES, prims.CHACHA]
    assert noise.initiation_payload(b("a_crt"), b("tai64n"), offer) == b("aead_initiation_payload")
    assert noise.response_payload(b("b_crt"), prims.AES) == b("aead_response_payload")
    assert noise.choose_cipher(offer) == prims.AES
    ini, resp, pkt1, pkt2 = _handshake(offer, prims.AES)
    assert pkt1 == b("aead_initiation") and pkt2 == b("aead_response")
    # the payloads do not enter ck: the same keys as without the offer
    assert ini.keys() == (b("initiator_send_key"), b("initiator_receive_key"))
    assert noise.cipher_of_response(offer, prims.AES) == prims.AES


def test_cipher_rules() -> None:
    with pytest.raises(noise.HandshakeError, match="bad_handshake"):
        noise.cipher_of_response(None, prims.CHACHA)  # no offer: even chacha in the answer is refused
    with pytest.raises(noise.HandshakeError, match="cipher_mismatch"):
        noise.cipher_of_response([prims.AES], None)
    with pytest.raises(noise.HandshakeError, match="cipher_mismatch"):
        noise.choose_cipher(["rot13"])
    assert noise.choose_cipher(["rot13", prims.CHACHA]) == prims.CHACHA
    assert noise.choose_cipher(None) == prims.CHACHA


def test_cookie_reply_and_mac2() -> None:
    pkt1 = b("initiation")
    mac1 = pkt1[-32:-16]
    assert pkt1[-16:] == bytes(16)  # no cookie yet: zero mac2
    reply = noise.cookie_reply(int(V["a_sender_index"], 16), b("cookie_nonce"), b("b_static_public"), mac1,
                               b("cookie"))
    assert reply == b("cookie_reply")
    idx, cookie = noise.open_cookie_reply(reply, b("b_static_public"), mac1)
    assert idx == int(V["a_sender_index"], 16) and cookie == b("cookie")
    with pytest.raises(noise.HandshakeError, match="bad_cookie"):
        noise.open_cookie_reply(reply, b("b_static_public"), bytes(16))
    again = noise.add_macs(pkt1[:-32], b("b_static_public"), cookie)
    assert again == b("initiation_with_mac2")
    assert noise.mac2_ok(again, cookie) and noise.mac1_ok(again, b("b_static_public"))


def _transport(cipher: str, prefix: str) -> None:
    b_idx = int(V["b_sender_index"], 16)
    a_idx = int(V["a_sender_index"], 16)
    a = Session(a_idx, b_idx, b("initiator_send_key"), b("initiator_receive_key"), cipher)
    bb = Session(b_idx, a_idx, b("initiator_receive_key"), b("initiator_send_key"), cipher)
    ka = a.seal(noise.T_DATA, b"")
    ctl = a.seal(noise.T_CTRL, b("transport_control_plaintext"))
    data = a.seal(noise.T_DATA, b("transport_data_plaintext"))
    assert ka == b(prefix + "transport_keepalive")
    assert ctl == b(prefix + "transport_control")
    assert data == b(prefix + "transport_data")
    assert bb.open(ka) == (3, 0, b"")
    assert bb.open(ctl)[2] == b("transport_control_plaintext")
    assert bb.open(data)[2] == b("transport_data_plaintext")
    with pytest.raises(noise.HandshakeError, match="replay"):
        bb.open(data)
    tampered = bytearray(b(prefix + "transport_data"))
    tampered[0] = noise.T_CTRL  # only the header changes: the associated data fails
    fresh = Session(b_idx, a_idx, b("initiator_receive_key"), b("initiator_send_key"), cipher)
    with pytest.raises(noise.HandshakeError, match="auth_failed"):
        fresh.open(bytes(tampered))
    assert fresh.open(b(prefix + "transport_data"))[2] == b("transport_data_plaintext")  # window untouched


def test_transport_chacha() -> None:
    _transport(prims.CHACHA, "")
    plain = msgpack.unpackb(b("transport_control_plaintext"))
    assert plain == {"t": "register", "v": 1, "endpoints": [["192.0.2.10", 4787]]}


def test_transport_aes() -> None:
    _transport(prims.AES, "aes_")


def test_relayed() -> None:
    inner = b("relayed_data_to_relay")[8:]
    a = Session(int(V["a_sender_index"], 16), int(V["b_sender_index"], 16), b("initiator_send_key"),
                b("initiator_receive_key"))
    a.send_counter = 3
    assert inner == a.seal(noise.T_DATA, b("transport_data_plaintext"))
    assert b("relayed_data_to_relay")[:8] == noise.header(noise.T_RELAY) + (2).to_bytes(4, "little")
    assert b("relayed_data_from_relay") == noise.header(noise.T_RELAY) + (1).to_bytes(4, "little") + inner


def test_replay_window() -> None:
    w = ReplayWindow()
    assert w.fresh(0)
    w.mark(0)
    assert not w.fresh(0)
    w.mark(5000)
    assert not w.fresh(5000 - 4033) and w.fresh(5000 - 4032) and w.fresh(4999)
    assert not w.fresh(2**60)


WIRE = os.path.join(os.path.dirname(DOC), "protocol-wire.md")


def _wire_text() -> str:
    return re.sub(r"\s+", "", open(WIRE, encoding="utf-8").read().split("## 10. Test vectors")[1])


def test_wire_page_transport_vector() -> None:
    # docs/protocol-wire.md 10: key 42 x 32, type 3, index 0x01020304, counter 1, "ping"
    s = Session(0, 0x01020304, bytes([0x42]) * 32, b"", prims.CHACHA, send_counter=1)
    pkt = s.seal(noise.T_DATA, b"ping")
    assert pkt.hex() in _wire_text()
    assert pkt.hex().startswith("0302000004030201" + "0100000000000000")


def test_wire_page_mac_and_cookie_vectors() -> None:
    text = _wire_text()
    key = bytes(range(32))
    m = bytes.fromhex("010200000d0c0b0a") + b"flatnet test vector"
    cookie = bytes([0x11]) * 16
    assert f"mac1_key={noise.mac1_key(key).hex()}" in text
    with_macs = noise.add_macs(m, key, cookie)
    assert f"mac1={with_macs[-32:-16].hex()}" in text
    assert f"mac2={with_macs[-16:].hex()}" in text
    assert f"cookie_key={noise.cookie_key(key).hex()}" in text
    mac1 = noise.add_macs(m, key, None)[-32:-16]
    reply = noise.cookie_reply(0x0A0B0C0D, bytes([0x22]) * 24, key, mac1, cookie)
    assert reply[:8].hex() == "060200000d0c0b0a"
    assert reply[8:32] == bytes([0x22]) * 24
    assert f"reply=060200000d0c0b0a2222...22(24bytes){reply[32:].hex()}" in text  # the page shortens the nonce
