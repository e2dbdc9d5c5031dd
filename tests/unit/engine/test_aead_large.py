"""Long packets sealed and opened through OpenSSL's libcrypto (aead_large.c): the same
bytes as libsodium on both sides of the switch (FN_AEAD_LARGE_MIN), forgeries rejected
with the buffer wiped, and the switch to libsodium (fn_set_large_cipher(0), or no
OpenSSL) giving the same bytes."""
import os
import threading

import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.crypto import ffi, lib
from tests.harness.wire import BATCH_STRIDE as STRIDE, c_seal_batch as batch_seal, seal as pynacl_seal

LARGE_MIN = lib.FN_AEAD_LARGE_MIN


@pytest.fixture(autouse=True)
def large_on():
    lib.fn_set_large_cipher(1)
    yield
    lib.fn_set_large_cipher(1)


def batch_open(key: bytes, packets: list[bytes]) -> tuple[list[int], list[bytes]]:
    """lengths fn_open_batch reports (0: rejected) and each slot's bytes afterwards"""
    buf = ffi.new("uint8_t[]", STRIDE * len(packets))
    for i, p in enumerate(packets):
        ffi.memmove(buf + i * STRIDE, p, len(p))
    lens = ffi.new("uint32_t[]", [len(p) - 16 for p in packets])
    lib.fn_open_batch(key, buf, STRIDE, lens, len(packets), 0)
    return list(lens), [bytes(ffi.buffer(buf + i * STRIDE, len(p))) for i, p in enumerate(packets)]


def test_openssl_is_found_here():
    # the reference machine (Debian 12, OpenSSL 3) has it; without it the engine logs
    # cipher=...libsodium and still works (test_the_switch_gives_the_same_bytes)
    assert lib.fn_large_cipher() == 1


LENGTHS = [LARGE_MIN - 1, LARGE_MIN, LARGE_MIN + 1, 1023, 1024, 1400, 1420, 1436, 9000, 65000]


@pytest.mark.parametrize("large", [1, 0])
def test_the_switch_gives_the_same_bytes_as_libsodium(large):
    lib.fn_set_large_cipher(large)
    key = os.urandom(32)
    payloads = [os.urandom(n) for n in LENGTHS]
    sealed = batch_seal(key, 11, payloads)
    for i, p in enumerate(payloads):
        assert sealed[i] == pynacl_seal(key, 0, 11 + i, p), len(p)
    lens, bufs = batch_open(key, sealed)
    for i, p in enumerate(payloads):
        assert lens[i] == len(p) and bufs[i][16:16 + len(p)] == p, len(p)


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), counter=st.integers(0, 2**60 - 1),
       pt=st.binary(min_size=LARGE_MIN - 8, max_size=2000))
def test_agrees_with_libsodium_on_random_inputs(key, counter, pt):
    assert batch_seal(key, counter, [pt])[0] == pynacl_seal(key, 0, counter, pt)


def test_a_forgery_is_rejected_and_its_plaintext_wiped():
    key = os.urandom(32)
    good = batch_seal(key, 5, [os.urandom(1400)])[0]
    for bit in list(range(0, len(good) * 8, 997)) + [len(good) * 8 - 1]:  # header, ciphertext and tag
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        lens, bufs = batch_open(key, [bytes(bad)])
        assert lens == [0], bit
        # no unauthenticated plaintext left: the payload is zeros (OpenSSL decrypts first)
        assert bufs[0][16:16 + 1400] == bytes(1400), bit
    assert batch_open(os.urandom(32), [good])[0] == [0]  # another key


def test_threads_each_get_their_own_context():
    # the data path seals in one thread and opens in another; contexts are per thread
    key, errors = os.urandom(32), []
    payloads = [os.urandom(1400) for _ in range(8)]
    want = [pynacl_seal(key, 0, 3 + i, p) for i, p in enumerate(payloads)]

    def work():
        for _ in range(50):
            if batch_seal(key, 3, payloads) != want or batch_open(key, want)[0] != [1400] * 8:
                errors.append("mismatch")
                return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
