"""AES-256-GCM transport (engine/crypto/csrc/aead_aes.c) against an independent
implementation (the `cryptography` package): same bytes sealed, every length class
opened, forgeries refused with the plaintext wiped, and the data path's per-session
contexts (rx slot, send key, staged key) used and replaced correctly."""
import ipaddress
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from flatnet.engine.crypto import ffi, lib  # noqa: E402
from flatnet.engine.datapath import DataPath, aes_gcm_available  # noqa: E402
from flatnet.engine.proto.constants import AEAD_AES  # noqa: E402
from tests.harness.wire import ipv4_udp, open_aes, seal, seal_aes  # noqa: E402
from tests.unit.engine.test_datapath import LEASE, NET, RX_INDEX, STATIC_PUBLIC, outside  # noqa: E402

pytestmark = pytest.mark.skipif(not aes_gcm_available(), reason="no AES-NI/PCLMULQDQ or no OpenSSL AES-256-GCM")
AES = lib.FN_CIPHER_AES256GCM
STRIDE = 65536 + 64
MAX = 65507 - 32  # the largest payload a UDP datagram carries after header and tag
LENGTHS = [0, 1, 15, 16, 17, 255, 256, 575, 576, 1400, 1420, 8972, MAX] + random.Random(19).sample(range(MAX), 12)


def c_seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    buf = ffi.new("uint8_t[]", STRIDE)
    ffi.memmove(buf + 16, plaintext, len(plaintext))
    assert lib.fn_seal_batch(key, counter, buf, STRIDE, ffi.new("uint32_t[]", [len(plaintext)]), 1, AES) == 1
    return bytes(ffi.buffer(buf, 16 + len(plaintext) + 16))


def c_open(key: bytes, packet: bytes) -> tuple[bool, bytes]:
    """(opened, the payload bytes left in the buffer either way)"""
    buf = ffi.new("uint8_t[]", STRIDE)
    ffi.memmove(buf, packet, len(packet))
    lens = ffi.new("uint32_t[]", [len(packet) - 16])
    ok = lib.fn_open_batch(key, buf, STRIDE, lens, 1, AES) == 1
    return ok, bytes(ffi.buffer(buf + 16, len(packet) - 32))


@pytest.mark.parametrize("length", LENGTHS)
def test_same_bytes_as_an_independent_aes_gcm(length):
    key, counter = os.urandom(32), random.Random(length).getrandbits(60)
    plaintext = os.urandom(length)
    packet = c_seal(key, counter, plaintext)
    # nonce: 4 zero bytes, then the counter u64 little endian; AD: the 16-byte header
    assert packet[16:] == AESGCM(key).encrypt(b"\0" * 4 + counter.to_bytes(8, "little"), plaintext, packet[:16])
    assert open_aes(key, packet) == plaintext
    assert c_open(key, seal_aes(key, 0, counter, plaintext)) == (True, plaintext)


@pytest.mark.parametrize("length", [0, 1, 255, 1400, MAX])
def test_forgeries_are_refused_and_the_plaintext_wiped(length):
    key = os.urandom(32)
    good = seal_aes(key, 0, 5, os.urandom(length) or b"")
    for at in {len(good) - 1, len(good) - 16, 9, 3, 16 if length else 20, len(good) - 17 if length else 21}:
        bad = bytearray(good)
        bad[at] ^= 0x01
        ok, left = c_open(key, bytes(bad))
        assert not ok and left == bytes(length)  # nothing unauthenticated stays behind
    assert not c_open(os.urandom(32), good)[0]
    assert not c_open(key, good[:-1])[0]
    assert c_open(key, good) == (True, good[16:-16] and open_aes(key, good))


def test_fn_aes_seal_and_open_for_tests():
    key, nonce, ad = os.urandom(32), os.urandom(12), b"any associated data"
    buf = ffi.new("uint8_t[]", 100)
    ffi.memmove(buf, b"x" * 50, 50)
    assert lib.fn_aes_seal(key, nonce, ad, len(ad), buf, 50) == 66
    assert bytes(ffi.buffer(buf, 66)) == AESGCM(key).encrypt(nonce, b"x" * 50, ad)
    assert lib.fn_aes_open(key, nonce, ad, len(ad), buf, 66) == 50 and bytes(ffi.buffer(buf, 50)) == b"x" * 50
    assert lib.fn_aes_open(key, nonce, b"other", 5, buf, 66) == -1 and bytes(ffi.buffer(buf, 50)) == bytes(50)


@pytest.fixture
def dp():
    d = DataPath(NET, 1420)
    d.set_local(LEASE)
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.set_identity(STATIC_PUBLIC)
    return d


def test_the_data_path_opens_an_aes_session_and_refuses_chacha_on_it(dp):
    key = os.urandom(32)
    dp.add_rx(RX_INDEX, 1, key, AEAD_AES)
    good, big = ipv4_udp("10.87.2.5", "10.87.1.9", b"hello aes"), ipv4_udp("10.87.2.5", "10.87.1.9", b"y" * 1300)
    packets = [seal_aes(key, RX_INDEX, 0, good), seal_aes(key, RX_INDEX, 0, good),  # replay
               seal(key, RX_INDEX, 1, good),                                      # ChaCha under the AES key
               seal_aes(key, RX_INDEX, 2, b""), seal_aes(key, RX_INDEX, 3, big)]
    delivered, _ = outside(dp, packets)
    assert delivered == [good, big]
    drops = dp.drops()
    assert drops["replay"] == 1 and drops["auth_failed"] == 1


def test_rx_slot_reused_with_another_cipher(dp):
    """The slot's context goes with its key: re-adding the index as ChaCha (a rekey to
    an old peer) opens ChaCha, and AES again after that."""
    k1, k2, k3 = os.urandom(32), os.urandom(32), os.urandom(32)
    good = ipv4_udp("10.87.2.5", "10.87.1.9", b"x")
    dp.add_rx(RX_INDEX, 1, k1, AEAD_AES)
    dp.remove_rx(RX_INDEX)
    dp.add_rx(RX_INDEX, 1, k2)
    assert outside(dp, [seal(k2, RX_INDEX, 0, good), seal_aes(k1, RX_INDEX, 1, good)])[0] == [good]
    dp.add_rx(RX_INDEX, 1, k3, AEAD_AES)
    assert outside(dp, [seal_aes(k3, RX_INDEX, 0, good)])[0] == [good]


def test_send_key_seals_aes_and_a_staged_key_keeps_its_own_cipher(dp):
    k1, k2 = os.urandom(32), os.urandom(32)
    dp.set_tx_key(1, k1, 0x55, AEAD_AES)
    first = dp.seal_control(1, b"ping")
    assert open_aes(k1, first) == b"ping" and first[4:8] == (0x55).to_bytes(4, "little")
    # a responder's staged ChaCha key: AES stays in use until the initiator confirms
    dp.add_rx(RX_INDEX, 1, k2)
    dp.stage_tx_key(1, k2, 0x66, RX_INDEX)
    assert open_aes(k1, dp.seal_control(1, b"still aes")) == b"still aes"
    outside(dp, [seal(k2, RX_INDEX, 0, ipv4_udp("10.87.2.5", "10.87.1.9", b"x"))])  # confirms
    promoted = dp.seal_control(1, b"now chacha")
    assert promoted[4:8] == (0x66).to_bytes(4, "little")
    from tests.harness.wire import open_packet
    assert open_packet(k2, promoted)[3] == b"now chacha"
    dp.clear_tx_key(1)
    assert dp.seal_control(1, b"x") is None


def test_many_rekeys_free_their_contexts(dp):
    """Install and replace AES keys many times: the sanitizer build (python -m
    benchmarks fuzz) sees a leak; here at least nothing breaks and the last key wins."""
    for i in range(300):
        k = os.urandom(32)
        dp.add_rx(RX_INDEX, 1, k, AEAD_AES)
        dp.set_tx_key(1, k, i, AEAD_AES)
        dp.stage_tx_key(1, k, i, RX_INDEX, AEAD_AES)
    assert open_aes(k, dp.seal_control(1, b"last")) == b"last"
    dp.remove_peer(1)


def test_a_wiped_aes_key_leaves_no_copy_in_memory(dp):
    """docs/security.md "Keys in memory" 8: an AES session key lives in the data path
    (raw, and expanded in its OpenSSL context) only until it is removed; the context
    is freed with EVP_CIPHER_CTX_free, which cleanses it. The key is handed over from
    a C buffer in two halves held apart, so Python's objects never hold it."""
    from tests.harness.memscan import pairs_in_memory
    first, second = os.urandom(16), os.urandom(16)
    key = ffi.new("uint8_t[32]")
    ffi.memmove(key, first, 16)
    ffi.memmove(key + 16, second, 16)
    assert lib.fn_rx_add(dp.ctx, RX_INDEX, 1, key, AES) == 0
    assert lib.fn_peer_tx_key(dp.ctx, 1, key, 0x55, AES) == 0
    assert lib.fn_peer_tx_key_staged(dp.ctx, 1, key, 0x56, RX_INDEX, AES) == 0
    out = ffi.new("uint8_t[]", 64)
    assert lib.fn_seal_control(dp.ctx, 1, b"x", 1, out, 64) == 33
    ffi.memmove(key, bytes(32), 32)  # the caller's copy, as engine/datapath.py's bytes go away
    # (no scan while the key is installed: the scan's own copies of memory would stay
    # behind in freed heap and be found by the next scan)
    lib.fn_rx_remove(dp.ctx, RX_INDEX)
    lib.fn_peer_tx_clear(dp.ctx, 1)
    assert pairs_in_memory([(first, second)]) == 0


@settings(max_examples=150, deadline=None)
@given(length=st.one_of(st.integers(0, 2048), st.integers(0, MAX)), counter=st.integers(0, 2**60 - 1),
       flip=st.integers(0, 2**20), seed=st.binary(min_size=32, max_size=32))
def test_random_lengths_agree_with_cryptography_and_forgeries_leave_nothing(length, counter, flip, seed):
    """The provider's functions called directly (aead_aes.c), keyed once per context:
    the same bytes as `cryptography` for any length up to the largest datagram, opened
    back, and a packet with any one bit flipped (header, ciphertext or tag) refused
    with its payload bytes zeroed."""
    key = seed
    plaintext = os.urandom(length)
    packet = c_seal(key, counter, plaintext)
    assert packet[16:] == AESGCM(key).encrypt(b"\0" * 4 + counter.to_bytes(8, "little"), plaintext, packet[:16])
    assert c_open(key, packet) == (True, plaintext)
    bad = bytearray(packet)
    bit = flip % (len(bad) * 8)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert c_open(key, bytes(bad)) == (False, bytes(length))
