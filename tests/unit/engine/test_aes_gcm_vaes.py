"""Flatnet's own AES-256-GCM with VAES and VPCLMULQDQ (engine/crypto/csrc/aes_gcm_vaes.c),
which aead_aes.c uses instead of OpenSSL's functions where the CPU has them: the same
bytes as an independent implementation (the `cryptography` package) for every length up
to 2100 and random ones up to 65535, with associated data of 0..64 bytes, in place and
apart, at unaligned addresses; the published test vectors; forgeries of the tag, the
ciphertext and the associated data refused with the output zeroed; and the escape hatch
FLATNET_AES_IMPL=openssl."""
import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from flatnet.engine.crypto import ffi, lib  # noqa: E402
from flatnet.engine.datapath import aes_gcm_available, aes_gcm_impl  # noqa: E402


def _cpu_has_vaes() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return {"avx2", "aes", "pclmulqdq", "vaes", "vpclmulqdq"} <= set(flags)


VAES = _cpu_has_vaes() and os.environ.get("FLATNET_AES_IMPL", "").lower() != "openssl"
pytestmark = pytest.mark.skipif(not (aes_gcm_available() and VAES),
                                reason="no AVX2+VAES+VPCLMULQDQ, or FLATNET_AES_IMPL=openssl (OpenSSL's path "
                                       "runs; test_aes_gcm.py covers it)")


def test_the_vaes_code_is_the_one_in_use():
    assert lib.fn_aes_gcm_impl() == lib.FN_AES_IMPL_VAES and aes_gcm_impl() == "vaes"


def crypt(enc: bool, key: bytes, nonce: bytes, ad: bytes, data: bytes, in_at: int = 0, out_at: int = 0,
          in_place: bool = False) -> bytes | None:
    """fn_aes_crypt with the input at byte offset in_at of one buffer and the output at
    out_at of another (or the same place); the output, or None on a bad tag (then the
    output bytes must be zero)."""
    size = len(data) + 16
    src = ffi.new("uint8_t[]", size + 64)
    dst = src if in_place else ffi.new("uint8_t[]", size + 64)
    ffi.memmove(src + in_at, data, len(data))
    if not in_place:
        ffi.memmove(dst + out_at, b"\xa5" * size, size)  # not zero: a wipe must be seen
    out = src + in_at if in_place else dst + out_at
    n = lib.fn_aes_crypt(int(enc), key, nonce, ad, len(ad), src + in_at, out, len(data))
    if n < 0:
        assert bytes(ffi.buffer(out, max(len(data) - 16, 0))) == bytes(max(len(data) - 16, 0))
        return None
    return bytes(ffi.buffer(out, n))


def test_every_length_to_2100_matches_cryptography():
    rng = random.Random(2100)
    for length in range(2101):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        ad, plaintext = rng.randbytes(rng.randrange(65)), rng.randbytes(length)
        sealed = AESGCM(key).encrypt(nonce, plaintext, ad)
        at = rng.randrange(32), rng.randrange(32)
        assert crypt(True, key, nonce, ad, plaintext, *at) == sealed, length
        assert crypt(False, key, nonce, ad, sealed, *at[::-1]) == plaintext, length


def test_random_lengths_to_65535_in_place_and_apart():
    rng = random.Random(65535)
    for length in [65535, 65534, 65520, 65519, 4096, 4095, 4097, 256, 255, 257] + [rng.randrange(65536)
                                                                                   for _ in range(150)]:
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        ad, plaintext = rng.randbytes(rng.randrange(65)), rng.randbytes(length)
        sealed = AESGCM(key).encrypt(nonce, plaintext, ad)
        assert crypt(True, key, nonce, ad, plaintext, in_place=True) == sealed
        assert crypt(True, key, nonce, ad, plaintext, 3, 17) == sealed
        assert crypt(False, key, nonce, ad, sealed, in_place=True) == plaintext
        assert crypt(False, key, nonce, ad, sealed, 29, 1) == plaintext


def test_associated_data_of_any_length():
    """The data path's is 16 bytes; longer ones cross the 16-block aggregation."""
    rng = random.Random(7)
    for adlen in [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 257, 511, 1000, 4099]:
        key, nonce, ad = rng.randbytes(32), rng.randbytes(12), rng.randbytes(adlen)
        for length in (0, 1, 16, 100, 1400):
            plaintext = rng.randbytes(length)
            sealed = AESGCM(key).encrypt(nonce, plaintext, ad)
            assert crypt(True, key, nonce, ad, plaintext, 5, 0) == sealed
            assert crypt(False, key, nonce, ad, sealed) == plaintext


# McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13-16 (the
# AES-256 ones with a 96-bit IV; also in NIST's GCM validation set)
K15 = "feffe9928665731c6d6a8f9467308308" * 2
P15 = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
C15 = ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
       "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad")
VECTORS = [  # key, iv, plaintext, ad, ciphertext, tag
    ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
    (K15, "cafebabefacedbaddecaf888", P15, "", C15, "b094dac5d93471bdec1a502270e3cc6c"),
    (K15, "cafebabefacedbaddecaf888", P15[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2", C15[:120],
     "76fc6ece0f4e1768cddf8853bb2d551b"),
]


@pytest.mark.parametrize("key,iv,plaintext,ad,ciphertext,tag", VECTORS)
def test_published_vectors(key, iv, plaintext, ad, ciphertext, tag):
    key, iv, plaintext, ad = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(plaintext), bytes.fromhex(ad)
    assert crypt(True, key, iv, ad, plaintext) == bytes.fromhex(ciphertext + tag)
    assert crypt(False, key, iv, ad, bytes.fromhex(ciphertext + tag)) == plaintext


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 64, 255, 256, 257, 1400, 9000])
def test_tampered_tag_ciphertext_or_ad_is_refused_and_the_output_zeroed(length):
    rng = random.Random(length)
    key, nonce, ad = rng.randbytes(32), rng.randbytes(12), rng.randbytes(16)
    sealed = AESGCM(key).encrypt(nonce, rng.randbytes(length), ad)
    for at in sorted({0, length // 2, length - 1, length, length + 7, length + 15} - {-1}):
        for bit in (0, 7):
            bad = bytearray(sealed)
            bad[at] ^= 1 << bit
            assert crypt(False, key, nonce, ad, bytes(bad)) is None, (at, bit)
            assert crypt(False, key, nonce, ad, bytes(bad), in_place=True) is None
    for i in (0, 15):
        bad_ad = bytearray(ad)
        bad_ad[i] ^= 0x80
        assert crypt(False, key, nonce, bytes(bad_ad), sealed) is None
    assert crypt(False, key, nonce, ad + b"\0", sealed) is None      # AD padding is not ignored
    assert crypt(False, key, nonce[:-1] + bytes([nonce[-1] ^ 1]), ad, sealed) is None
    assert crypt(False, rng.randbytes(32), nonce, ad, sealed) is None
    assert crypt(False, key, nonce, ad, sealed[:-1]) is None        # truncated
    assert crypt(False, key, nonce, ad, sealed) is not None


_PROBE = """
from flatnet.engine.crypto import ffi, lib
from flatnet.engine.datapath import aes_gcm_impl
buf = bytearray(b"probe" * 300)
out = bytearray(len(buf) + 16)
n = lib.fn_aes_crypt(1, bytes(range(32)), bytes(12), b"ad", 2, ffi.from_buffer(buf), ffi.from_buffer(out),
                     len(buf))
print(aes_gcm_impl(), bytes(out[:n]).hex())
"""


@pytest.mark.parametrize("value,impl", [("openssl", "openssl"), ("OpenSSL", "openssl"), ("auto", "vaes"),
                                        ("", "vaes"), ("opnessl", "openssl")])
def test_flatnet_aes_impl_openssl_keeps_openssls_code_with_the_same_bytes(value, impl):
    env = dict(os.environ, FLATNET_AES_IMPL=value)
    got = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    sealed = AESGCM(bytes(range(32))).encrypt(bytes(12), b"probe" * 300, b"ad")
    assert got == [impl, sealed.hex()]


def test_openssl_ia32cap_hiding_aes_ni_still_offers_no_aes():
    """As before this code: AES is offered only where OpenSSL has AES-NI and PCLMULQDQ
    too (engine/datapath.openssl_ia32cap_keeps_aes), whichever code would run it."""
    env = dict(os.environ, OPENSSL_ia32cap="~0x200000000000000")
    probe = "from flatnet.engine.datapath import aes_gcm_impl; print(aes_gcm_impl())"
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert got == ["none"]

