"""The compact ChaCha20-Poly1305 the data path uses for short packets (aead_small.c):
RFC 8439's test vector, byte-for-byte agreement with libsodium (through PyNaCl) on
random inputs, forgeries rejected without touching the buffer, and the length at which
the data path switches to libsodium."""
import os

from hypothesis import given, settings, strategies as st
from nacl import bindings as sodium

from flatnet.engine.crypto import ffi, lib
from tests.harness.wire import seal as pynacl_seal

AEAD_SMALL_MAX = lib.FN_AEAD_SMALL_MAX


def small_seal(key: bytes, nonce: bytes, ad: bytes, pt: bytes) -> bytes:
    buf = ffi.new("uint8_t[]", len(pt) + 16)
    ffi.memmove(buf, pt, len(pt))
    n = lib.fn_aead_small_seal(key, nonce, ad, len(ad), buf, len(pt))
    return bytes(ffi.buffer(buf, n))


def small_open(key: bytes, nonce: bytes, ad: bytes, ct: bytes) -> tuple[int, bytes]:
    """(result, the buffer afterwards)"""
    buf = ffi.new("uint8_t[]", max(len(ct), 1))
    ffi.memmove(buf, ct, len(ct))
    n = lib.fn_aead_small_open(key, nonce, ad, len(ad), buf, len(ct))
    return n, bytes(ffi.buffer(buf, len(ct)))


def test_rfc8439_aead_vector():
    # RFC 8439 section 2.8.2
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
          b"the future, sunscreen would be it.")
    out = small_seal(key, nonce, ad, pt)
    assert out[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert out[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert out == sodium.crypto_aead_chacha20poly1305_ietf_encrypt(pt, ad, nonce, key)
    assert small_open(key, nonce, ad, out) == (len(pt), pt + out[-16:])


@settings(max_examples=400, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       ad=st.binary(max_size=40), pt=st.binary(max_size=600))
def test_agrees_with_libsodium_both_ways(key, nonce, ad, pt):
    ours = small_seal(key, nonce, ad, pt)
    assert ours == sodium.crypto_aead_chacha20poly1305_ietf_encrypt(pt, ad or None, nonce, key)
    n, buf = small_open(key, nonce, ad, ours)
    assert n == len(pt) and buf[:n] == pt


def test_every_length_around_the_block_edges():
    key, nonce = os.urandom(32), os.urandom(12)
    for n in (0, 1, 15, 16, 17, 31, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1500):
        pt = os.urandom(n)
        assert small_seal(key, nonce, b"", pt) == sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            pt, None, nonce, key), n


def test_a_forgery_is_rejected_and_leaves_the_buffer_as_it_came():
    key, nonce = os.urandom(32), os.urandom(12)
    good = small_seal(key, nonce, b"", os.urandom(100))
    for bit in range(0, len(good) * 8, 37):  # every 37th bit, ciphertext and tag
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert small_open(key, nonce, b"", bytes(bad)) == (-1, bytes(bad)), bit
    assert small_open(os.urandom(32), nonce, b"", good)[0] == -1      # another key
    assert small_open(key, os.urandom(12), b"", good)[0] == -1        # another nonce
    assert small_open(key, nonce, b"x", good)[0] == -1                # other associated data
    assert small_open(key, nonce, b"", good[:15])[0] == -1             # shorter than a tag


def test_the_data_path_seals_and_opens_both_sides_of_the_switch_to_libsodium():
    # fn_seal_batch / fn_open_batch go through the same choice as the data path
    key, stride = os.urandom(32), 2048
    lens = [0, 1, 84, AEAD_SMALL_MAX - 1, AEAD_SMALL_MAX, AEAD_SMALL_MAX + 1, 1400]
    payloads = [os.urandom(n) for n in lens]
    buf = ffi.new("uint8_t[]", stride * len(lens))
    for i, p in enumerate(payloads):
        ffi.memmove(buf + i * stride + 16, p, len(p))
    clens = ffi.new("uint32_t[]", lens)
    assert lib.fn_seal_batch(key, 7, buf, stride, clens, len(lens), 0) == len(lens)
    for i, p in enumerate(payloads):
        sealed = bytes(ffi.buffer(buf + i * stride, 16 + len(p) + 16))
        assert sealed[16:] == pynacl_seal(key, 0, 7 + i, p)[16:], lens[i]
    olens = ffi.new("uint32_t[]", [n + 16 for n in lens])
    assert lib.fn_open_batch(key, buf, stride, olens, len(lens), 0) == len(lens)
    for i, p in enumerate(payloads):
        assert olens[i] == len(p) and bytes(ffi.buffer(buf + i * stride + 16, len(p))) == p
