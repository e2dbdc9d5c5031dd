"""Noise_IK_25519_ChaChaPoly_BLAKE2b (Noise spec rev. 34), the handshake only.

    IK:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se

Primitives come from libsodium through PyNaCl's low-level bindings (control path,
two messages per handshake: the per-call cost does not matter here). The transport
keys from split() go to the C data path.
"""
from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from nacl import bindings as sodium
from nacl.exceptions import CryptoError, RuntimeError as NaclRuntimeError

from flatnet.engine.proto.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
DHLEN = 32
TAGLEN = 16
EMPTY = b""


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def dh(private: bytes, public: bytes) -> bytes:
    try:
        return sodium.crypto_scalarmult(private, public)
    except (NaclRuntimeError, CryptoError, ValueError):
        raise RemoteProtocolError("bad_handshake", "invalid public key") from None


def generate_keypair(random_bytes=None) -> tuple[bytes, bytes]:  # noqa: ANN001
    private = random_bytes(32) if random_bytes else sodium.randombytes(32)
    return private, sodium.crypto_scalarmult_base(private)


def public_key(private: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(private)


class StaticDH:
    """ss = DH(our static key, a peer's static key), kept for peers that finished a
    handshake with us (as wireguard-go precomputes it per configured peer): their next
    handshake, a rekey every 2 minutes, costs one X25519 less on each side.

    Bounded (least recently used out first). Entries are added, and made the most
    recently used, only by the caller, after the handshake that used the value was
    authenticated and found fresh (PeerSession), and dropped with the peer
    (Device.remove_peer). get() is a look-up only: a responder calls it before the
    initiation is authenticated (anyone who knows our public key can name any key
    there), so it must not change the order. A value is a pure function of the two
    keys: a cached one is exactly what dh() would return. Bound to one private key: a
    new key (Identity) gets a new cache. Not thread-safe: the handshakes run on the
    event loop's thread."""

    def __init__(self, private: bytes, limit: int = 16384) -> None:
        self.private = private
        self.limit = limit
        self._values: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, remote_static: bytes) -> bytes | None:
        return self._values.get(remote_static)

    def remember(self, remote_static: bytes, value: bytes) -> None:
        self._values[remote_static] = value
        self._values.move_to_end(remote_static)
        while len(self._values) > self.limit:
            self._values.popitem(last=False)

    def forget(self, remote_static: bytes) -> None:
        self._values.pop(remote_static, None)


def _nonce(n: int) -> bytes:
    return b"\x00" * 4 + n.to_bytes(8, "little")


class CipherState:
    def __init__(self, key: bytes | None = None) -> None:
        self.k = key
        self.n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        out = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(self.n), self.k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            out = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _nonce(self.n), self.k)
        except CryptoError:
            raise RemoteProtocolError("bad_handshake", "authentication failed") from None
        self.n += 1
        return out


class SymmetricState:
    def __init__(self, prologue: bytes) -> None:
        self.h = PROTOCOL_NAME.ljust(HASHLEN, b"\x00")
        self.ck = self.h
        self.cipher = CipherState()
        self.mix_hash(prologue)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, EMPTY, 2)
        return k1[:32], k2[:32]

    def copy(self) -> SymmetricState:
        """A working copy: a message is read into it and committed only once it
        authenticated, so junk cannot spoil the real handshake (see read_message_*)."""
        other = SymmetricState.__new__(SymmetricState)
        other.h, other.ck = self.h, self.ck
        other.cipher = CipherState(self.cipher.k)
        other.cipher.n = self.cipher.n
        return other


class HandshakeIK:
    """One IK handshake, either role. After the second message, `split()` gives
    (send_key, receive_key) for this side, and `remote_static` is the peer's key.

    static_public: our static public key if the caller has it (Identity keeps it:
    one X25519 base multiplication less per handshake). static_dh: ss values of
    peers we know (StaticDH, for this static key); `ss_value` is the one this
    handshake used, set once the message that needed it authenticated."""

    def __init__(self, initiator: bool, static_private: bytes, prologue: bytes,
                 remote_static: bytes | None = None, ephemeral: tuple[bytes, bytes] | None = None,
                 static_public: bytes | None = None, static_dh: StaticDH | None = None) -> None:
        if initiator and remote_static is None:
            raise LocalProtocolError("an IK initiator must know the responder's static key")
        if static_dh is not None and static_dh.private != static_private:
            raise LocalProtocolError("the StaticDH cache is for another static key")
        self.initiator = initiator
        self.s = (static_private, static_public if static_public is not None else public_key(static_private))
        self.static_dh = static_dh
        self.ss_value: bytes | None = None
        self.e = ephemeral
        self.rs = remote_static
        self.re: bytes | None = None
        self.ss = SymmetricState(prologue)
        # pre-message: the responder's static key
        self.ss.mix_hash(remote_static if initiator else self.s[1])
        self.done = False

    def _ephemeral(self) -> tuple[bytes, bytes]:
        if self.e is None:
            self.e = generate_keypair()
        return self.e

    # -> e, es, s, ss
    def write_message_1(self, payload: bytes) -> bytes:
        if not self.initiator or self.re is not None:
            raise LocalProtocolError("message 1 is the initiator's first message")
        e_priv, e_pub = self._ephemeral()
        self.ss.mix_hash(e_pub)
        self.ss.mix_key(dh(e_priv, self.rs))
        enc_s = self.ss.encrypt_and_hash(self.s[1])
        self.ss_value = self._static_static(self.rs)
        self.ss.mix_key(self.ss_value)
        return e_pub + enc_s + self.ss.encrypt_and_hash(payload)

    def read_message_1(self, message: bytes) -> bytes:
        if self.initiator:
            raise LocalProtocolError("only a responder reads message 1")
        message = bytes(message)
        if len(message) < DHLEN + DHLEN + TAGLEN + TAGLEN:
            raise RemoteProtocolError("bad_handshake", "message 1 too short")
        ss, re = self.ss.copy(), message[:DHLEN]
        ss.mix_hash(re)
        ss.mix_key(dh(self.s[0], re))
        rs = ss.decrypt_and_hash(message[DHLEN:DHLEN + DHLEN + TAGLEN])
        ss_value = self._static_static(rs)
        ss.mix_key(ss_value)
        payload = ss.decrypt_and_hash(message[DHLEN + DHLEN + TAGLEN:])
        self.ss, self.re, self.rs, self.ss_value = ss, re, rs, ss_value  # authenticated: commit
        return payload

    def _static_static(self, remote_static: bytes) -> bytes:
        """DH(s, rs): from the cache of peers known to us, else computed (not stored:
        the caller remembers it once the handshake is authenticated and fresh)."""
        if self.static_dh is not None:
            value = self.static_dh.get(remote_static)
            if value is not None:
                return value
        return dh(self.s[0], remote_static)

    # <- e, ee, se
    def write_message_2(self, payload: bytes) -> bytes:
        if self.initiator or self.re is None:
            raise LocalProtocolError("message 2 is the responder's answer to message 1")
        e_priv, e_pub = self._ephemeral()
        self.ss.mix_hash(e_pub)
        self.ss.mix_key(dh(e_priv, self.re))
        self.ss.mix_key(dh(e_priv, self.rs))
        out = e_pub + self.ss.encrypt_and_hash(payload)
        self.done = True
        return out

    def read_message_2(self, message: bytes) -> bytes:
        if not self.initiator or self.e is None:
            raise LocalProtocolError("only an initiator that sent message 1 reads message 2")
        message = bytes(message)
        if len(message) < DHLEN + TAGLEN:
            raise RemoteProtocolError("bad_handshake", "message 2 too short")
        # anyone who saw our initiation knows the receiver index and can answer first:
        # read into a copy, so a junk answer leaves the handshake as it was
        ss, re = self.ss.copy(), message[:DHLEN]
        ss.mix_hash(re)
        ss.mix_key(dh(self.e[0], re))
        ss.mix_key(dh(self.s[0], re))
        payload = ss.decrypt_and_hash(message[DHLEN:])
        self.ss, self.re, self.done = ss, re, True  # authenticated: commit
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """(send_key, receive_key) for this side."""
        if not self.done:
            raise LocalProtocolError("split() before the handshake finished")
        k1, k2 = self.ss.split()
        return (k1, k2) if self.initiator else (k2, k1)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h
