"""The test vectors in docs/protocol.md: recomputed with the engine's code and compared
with the document (so the two cannot drift apart), then checked against independent
code: the `noiseprotocol` package for the handshake, PyNaCl for the transport rule,
the C receive path for what a receiver does with them, engine.pki for the key files."""
import hashlib
import ipaddress
import os
import warnings

import msgpack
import pytest
from nacl import bindings as sodium
from nacl.signing import VerifyKey
from noise.connection import Keypair, NoiseConnection

from flatnet.engine import pki
from flatnet.engine.datapath import DataPath
from flatnet.engine.proto import cert as certs
from flatnet.engine.proto import revocation
from flatnet.engine.proto.constants import WIRE_VERSION
from tests.harness import vectors as vec
from tests.harness.wire import seal
from tests.unit.engine.test_datapath import outside


@pytest.fixture(scope="module")
def doc() -> dict[str, bytes | int]:
    with open(vec.DOC, encoding="utf-8") as f:
        pairs = vec.parse(f.read())
    return {name: int(value, 0) if value.startswith("0x") or value.isdigit() else bytes.fromhex(value)
            for name, value in pairs}


def test_the_document_holds_exactly_what_the_code_computes():
    with open(vec.DOC, encoding="utf-8") as f:
        written = vec.parse(f.read())
    computed = vec.compute()
    fix = "run python3 -m tests.harness.vectors --write and review the diff"
    assert [n for n, _ in written] == [n for n, _ in computed], f"docs/protocol.md lists other vectors: {fix}"
    stale = [n for (n, w), (_, c) in zip(written, computed) if w != c]
    assert not stale, f"docs/protocol.md is stale for {stale}: {fix}"


def test_render_and_parse_round_trip():
    pairs = vec.compute()
    assert vec.parse(vec.render(pairs)) == pairs


def _noise(prologue: bytes, initiator: bool, static: bytes, ephemeral: bytes, remote: bytes | None) -> NoiseConnection:
    conn = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2b")
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ephemeral keypair already set": on purpose here
        conn.start_handshake()
    return conn


@pytest.mark.parametrize("kind", ["", "aead_"])
def test_handshake_vectors_are_plain_noise_ik(doc, kind):
    """An independent Noise implementation, given the same keys, writes the same bytes;
    with the "aead" offer and choice too (kind "aead_", 5.10), whose Split() keys are
    the plain handshake's, as 14 says (the AES transport vectors use them)."""
    init, resp = doc[kind + "initiation"], doc[kind + "response"]
    init_noise, resp_noise = init[vec.INITIATION_NOISE], resp[vec.RESPONSE_NOISE]
    a = _noise(doc["noise_prologue"], True, doc["a_static_private"], doc["a_ephemeral_private"],
               doc["b_static_public"])
    b = _noise(doc["noise_prologue"], False, doc["b_static_private"], doc["b_ephemeral_private"], None)
    assert bytes(a.write_message(doc[kind + "initiation_payload"])) == init_noise
    assert bytes(b.read_message(init_noise)) == doc[kind + "initiation_payload"]
    assert bytes(b.write_message(doc[kind + "response_payload"])) == resp_noise
    assert bytes(a.read_message(resp_noise)) == doc[kind + "response_payload"]
    if not kind:  # the payloads enter h: the aead handshake has another hash
        assert a.get_handshake_hash() == b.get_handshake_hash() == doc["handshake_hash"]
    # Split(): the first key is the initiator's send key (5.1)
    assert a.noise_protocol.cipher_state_encrypt.k == doc["initiator_send_key"]
    assert a.noise_protocol.cipher_state_decrypt.k == doc["initiator_receive_key"]
    # the packet headers: type, version, two zero bytes, the sender's (and receiver's) index
    assert init[:8] == _prefix(1) + doc["a_sender_index"].to_bytes(4, "little")
    assert resp[:12] == (_prefix(2) + doc["b_sender_index"].to_bytes(4, "little")
                         + doc["a_sender_index"].to_bytes(4, "little"))


def _prefix(kind: int) -> bytes:
    return bytes([kind, WIRE_VERSION, 0, 0])


def _blake2b(data: bytes, size: int, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=size, key=key).digest()


def test_macs_and_cookie_reply_follow_the_documented_rule(doc):
    """mac1, mac2 and the cookie reply, recomputed with hashlib and PyNaCl from the
    rules in protocol.md 5.5."""
    for name, receiver in (("initiation", "b_static_public"), ("response", "a_static_public")):
        packet = doc[name]
        mac1_key = _blake2b(b"mac1----" + doc[receiver], 32)
        assert packet[-32:-16] == _blake2b(packet[:-32], 16, mac1_key), name
        assert packet[-16:] == bytes(16), name   # no cookie yet: mac2 is zeros
    with_mac2 = doc["initiation_with_mac2"]
    assert with_mac2[:-16] == doc["initiation"][:-16]
    assert with_mac2[-16:] == _blake2b(with_mac2[:-16], 16, doc["cookie"])
    reply = doc["cookie_reply"]
    assert reply[:8] == _prefix(6) + doc["a_sender_index"].to_bytes(4, "little")
    assert reply[8:32] == doc["cookie_nonce"]
    cookie_key = _blake2b(b"cookie--" + doc["b_static_public"], 32)
    assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(reply[32:], doc["initiation"][-32:-16], reply[8:32],
                                                              cookie_key) == doc["cookie"]


def test_transport_vectors_follow_the_documented_rule(doc):
    key = doc["initiator_send_key"]
    for name, plaintext in (("transport_keepalive", b""), ("transport_control", doc["transport_control_plaintext"]),
                            ("transport_data", doc["transport_data_plaintext"])):
        packet = doc[name]
        header, counter = packet[:16], int.from_bytes(packet[8:16], "little")
        assert header[:8] == _prefix(packet[0]) + doc["b_sender_index"].to_bytes(4, "little")
        nonce = b"\0" * 4 + counter.to_bytes(8, "little")
        # protocol.md 6.1: the 16-byte header is the associated data
        assert sodium.crypto_aead_chacha20poly1305_ietf_decrypt(packet[16:], header, nonce, key) == plaintext, name


def test_a_receiver_accepts_the_transport_vectors(doc):
    """host-b's C receive path with the responder's receive key (= initiator_send_key)."""
    dp = DataPath(vec.NETWORK, 1420)
    dp.set_peer(1, ipaddress.IPv4Network(vec.A_SUBNET))
    dp.set_local(vec.B_SUBNET)  # decrypted packets pass only to this host's own lease
    dp.add_rx(doc["b_sender_index"], 1, doc["initiator_send_key"])
    packets = [doc["transport_keepalive"], doc["transport_control"], doc["transport_data"],
               doc["relayed_data_from_relay"]]
    delivered, controls = outside(dp, packets)
    assert delivered == [doc["transport_data_plaintext"]] * 2
    assert [data for kind, data in controls if kind == 1] == [doc["transport_control_plaintext"]]
    assert not any(dp.drops().values())


def test_key_and_certificate_files_load(doc, tmp_path):
    for name in ("ca.key", "a.key"):
        path = tmp_path / name
        path.write_bytes(doc["ca_key_file" if name == "ca.key" else "a_key_file"])
        os.chmod(path, 0o600)
    (tmp_path / "ca.crt").write_bytes(doc["ca_crt"])
    (tmp_path / "a.crt").write_bytes(doc["a_crt"])
    assert pki.read_secret(str(tmp_path / "ca.key")) == doc["ca_ed25519_seed"]
    me = pki.load_identity(str(tmp_path / "ca.crt"), str(tmp_path / "a.crt"), str(tmp_path / "a.key"),
                           doc["handshake_unix_ns"] / 1e9)
    assert me.cert.name == vec.A_NAME and me.cert.key == doc["a_static_public"] and me.ca.key == doc["ca_ed25519_public"]


def test_fingerprints_and_blocklist_follow_the_documented_rule(doc):
    """protocol.md 3.6: fingerprint = SHA-256 of the signed details; the blocklist is a
    CA-signed msgpack envelope like a certificate. Checked with msgpack, hashlib and
    PyNaCl, then with the engine's revocation code."""
    for crt, fp in (("a_crt", "a_fingerprint"), ("c_crt", "c_fingerprint")):
        assert hashlib.sha256(msgpack.unpackb(doc[crt])["d"]).digest() == doc[fp]
    outer = msgpack.unpackb(doc["blocklist"])
    VerifyKey(doc["ca_ed25519_public"]).verify(outer["d"], outer["s"])
    details = msgpack.unpackb(outer["d"])
    assert details["t"] == "blocklist" and details["v"] == 1 and details["issuer"] == "vector-ca"
    assert details["fingerprints"] == [doc["c_fingerprint"]] and details["names"] == vec.BLOCKLIST_NAMES
    ca = certs.load_ca(doc["ca_crt"])
    blocklist = revocation.load(doc["blocklist"], ca)
    assert blocklist.reason(certs.decode(doc["c_crt"])[0]) is not None
    assert blocklist.reason(certs.decode(doc["a_crt"])[0]) is None


def test_aead_offer_and_choice_vectors(doc):
    """5.2 / 5.4: the offer lists the initiator's ciphers, the choice is one of them;
    the rest of each payload is the plain handshake's."""
    offer = msgpack.unpackb(doc["aead_initiation_payload"], raw=False)
    plain = msgpack.unpackb(doc["initiation_payload"], raw=False)
    assert offer.pop("aead") == ["aes-256-gcm", "chacha20-poly1305"] and offer == plain
    choice = msgpack.unpackb(doc["aead_response_payload"], raw=False)
    assert choice.pop("aead") == "aes-256-gcm" and choice == msgpack.unpackb(doc["response_payload"], raw=False)


def test_aes_transport_vectors_follow_the_documented_rule(doc):
    """6.1 with AES-256-GCM, checked by the `cryptography` package (not the engine's
    OpenSSL calls): same key, nonce and associated data as ChaCha20-Poly1305."""
    aesgcm = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM(doc["initiator_send_key"])
    for name, plaintext in (("aes_transport_keepalive", b""),
                            ("aes_transport_control", doc["transport_control_plaintext"]),
                            ("aes_transport_data", doc["transport_data_plaintext"])):
        packet = doc[name]
        header, counter = packet[:16], int.from_bytes(packet[8:16], "little")
        assert header[:8] == _prefix(packet[0]) + doc["b_sender_index"].to_bytes(4, "little")
        assert aesgcm.decrypt(b"\0" * 4 + counter.to_bytes(8, "little"), packet[16:], header) == plaintext, name
        assert packet != doc[name[4:]]  # another cipher: other bytes


def test_a_receiver_accepts_the_aes_transport_vectors(doc):
    from flatnet.engine.datapath import aes_gcm_available
    if not aes_gcm_available():
        pytest.skip("no AES-NI/PCLMULQDQ or no OpenSSL AES-256-GCM")
    dp = DataPath(vec.NETWORK, 1420)
    dp.set_peer(1, ipaddress.IPv4Network(vec.A_SUBNET))
    dp.set_local(vec.B_SUBNET)
    dp.add_rx(doc["b_sender_index"], 1, doc["initiator_send_key"], "aes-256-gcm")
    delivered, controls = outside(dp, [doc["aes_transport_keepalive"], doc["aes_transport_control"],
                                       doc["aes_transport_data"],
                                       seal(doc["initiator_send_key"], doc["b_sender_index"], 7,
                                            doc["transport_data_plaintext"])])
    assert delivered == [doc["transport_data_plaintext"]]
    assert [data for kind, data in controls if kind == 1] == [doc["transport_control_plaintext"]]
    assert dp.drops()["auth_failed"] == 1  # a ChaCha20-Poly1305 packet under the AES key


def test_the_fallback_sealer_gives_the_data_path_bytes(doc):
    pytest.importorskip("cryptography")
    sealed = vec.sealed_aes(doc["initiator_send_key"], doc["b_sender_index"])
    assert [sealed[k] for k in ("keepalive", "control", "data")] == [
        doc["aes_transport_keepalive"], doc["aes_transport_control"], doc["aes_transport_data"]]
