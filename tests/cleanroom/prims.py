"""The primitives of docs/protocol.md section 2, as thin wrappers."""
from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as nb

CHACHA = "chacha20-poly1305"
AES = "aes-256-gcm"
TAG = 16


class CryptoError(Exception):
    """A DH, AEAD or signature check failed."""


def blake2b(data: bytes, size: int = 64, key: bytes = b"") -> bytes:
    # libsodium's crypto_generichash: no salt, no personalization (5.5)
    return hashlib.blake2b(data, digest_size=size, key=key).digest()


def hmac_blake2b(key: bytes, data: bytes) -> bytes:
    # HMAC (RFC 2104) over BLAKE2b-512, block 128 bytes: hashlib.blake2b has block_size 128
    return hmac.new(key, data, hashlib.blake2b).digest()


def x25519_public(private: bytes) -> bytes:
    return nb.crypto_scalarmult_base(private)


def x25519(private: bytes, public: bytes) -> bytes:
    try:
        out = nb.crypto_scalarmult(private, public)
    except Exception as e:  # libsodium refuses an all-zero result
        raise CryptoError("x25519 failed") from e
    if out == bytes(32):  # section 2: a zero DH result fails the handshake
        raise CryptoError("x25519 gave zero")
    return out


def nonce12(n: int) -> bytes:
    # 4 zero bytes || u64 LE: Noise's ChaChaPoly nonce and the transport nonce (5.1, 6.1)
    return bytes(4) + n.to_bytes(8, "little")


def aead_seal(cipher: str, key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    if cipher == CHACHA:
        return nb.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, nonce12(n), key)
    if cipher == AES:
        return AESGCM(key).encrypt(nonce12(n), plaintext, ad)
    raise ValueError(f"unknown cipher {cipher!r}")


def aead_open(cipher: str, key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        if cipher == CHACHA:
            return nb.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, nonce12(n), key)
        if cipher == AES:
            return AESGCM(key).decrypt(nonce12(n), ciphertext, ad)
    except Exception as e:
        raise CryptoError("AEAD open failed") from e
    raise ValueError(f"unknown cipher {cipher!r}")


def xchacha_seal(key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
    return nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def xchacha_open(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except Exception as e:
        raise CryptoError("cookie reply does not open") from e


def ed25519_seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """(public, libsodium secret key) from a 32-byte RFC 8032 seed."""
    return nb.crypto_sign_seed_keypair(seed)


def ed25519_sign(secret: bytes, data: bytes) -> bytes:
    return nb.crypto_sign(data, secret)[:64]


def ed25519_verify(public: bytes, data: bytes, sig: bytes) -> bool:
    try:
        nb.crypto_sign_open(sig + data, public)
    except Exception:
        return False
    return True
