"""Our Noise IK against the independent `noiseprotocol` package, both roles: proof that
the handshake is real Noise and the split() keys carry transport messages both ways."""
from noise.connection import Keypair, NoiseConnection
from nacl import bindings as sodium

from flatnet.engine.proto.constants import PROLOGUE
from flatnet.engine.proto.noise import HandshakeIK, generate_keypair

NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"


def _theirs(initiator: bool, static_private: bytes, remote_public: bytes | None) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    if remote_public is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_public)
    conn.start_handshake()
    return conn


def _transport_ours(key: bytes, n: int, plaintext: bytes) -> bytes:
    return sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, b"", b"\0" * 4 + n.to_bytes(8, "little"), key)


def _open_ours(key: bytes, n: int, ciphertext: bytes) -> bytes:
    return sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, b"", b"\0" * 4 + n.to_bytes(8, "little"), key)


def test_we_initiate_they_respond():
    i_priv, _ = generate_keypair()
    r_priv, r_pub = generate_keypair()
    ours = HandshakeIK(True, i_priv, PROLOGUE, remote_static=r_pub)
    theirs = _theirs(False, r_priv, None)
    assert theirs.read_message(ours.write_message_1(b"cert+time")) == b"cert+time"
    assert ours.read_message_2(theirs.write_message(b"their cert")) == b"their cert"
    assert theirs.handshake_finished
    send, recv = ours.split()
    assert ours.handshake_hash == theirs.get_handshake_hash()
    # transport both ways
    assert theirs.decrypt(_transport_ours(send, 0, b"hello responder")) == b"hello responder"
    assert _open_ours(recv, 0, theirs.encrypt(b"hello initiator")) == b"hello initiator"


def test_they_initiate_we_respond():
    i_priv, i_pub = generate_keypair()
    r_priv, r_pub = generate_keypair()
    theirs = _theirs(True, i_priv, r_pub)
    ours = HandshakeIK(False, r_priv, PROLOGUE)
    assert ours.read_message_1(theirs.write_message(b"payload 1")) == b"payload 1"
    assert ours.rs == i_pub
    assert theirs.read_message(ours.write_message_2(b"payload 2")) == b"payload 2"
    send, recv = ours.split()
    assert _open_ours(recv, 0, theirs.encrypt(b"to responder")) == b"to responder"
    assert theirs.decrypt(_transport_ours(send, 0, b"to initiator")) == b"to initiator"
