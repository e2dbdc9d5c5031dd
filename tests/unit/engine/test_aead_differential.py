"""The three ChaCha20-Poly1305 codes (compact < 256 bytes, libsodium, OpenSSL >= 576)
against each other, as an attacker sees them (review aeadreview): a packet sealed with
one choice of code opens with every other choice, at lengths around both switches and
at the extremes; forged tags, associated data (header), ciphertext and truncations are
refused at every length class with the same drop reason; and a failed open leaves the
thread's OpenSSL context ready for the next good packet, in the same batch."""
import ipaddress
import itertools
import os

import pytest

from flatnet.engine.crypto import ffi, lib
from flatnet.engine.datapath import DataPath
from tests.harness.wire import BATCH_STRIDE as STRIDE, c_seal_batch as seal_batch, ipv4_udp, seal as pynacl_seal
from tests.harness.memscan import pairs_in_memory
from tests.unit.engine.test_datapath import KEY_RX, LEASE, NET, RX_INDEX, outside

SMALL_MAX, LARGE_MIN = lib.FN_AEAD_SMALL_MAX, lib.FN_AEAD_LARGE_MIN
# 0, the compact code's edge, libsodium's range, OpenSSL's edge, MTU sizes, the largest UDP payload
LENGTHS = [0, 1, 15, 16, 17, SMALL_MAX - 1, SMALL_MAX, SMALL_MAX + 1, LARGE_MIN - 17, LARGE_MIN - 1, LARGE_MIN,
           LARGE_MIN + 1, LARGE_MIN + 15, LARGE_MIN + 16, 1400, 1420, 8972, 65507 - 32]
CHOICES = list(itertools.product([1, 0], [1, 0]))  # (compact, large)


@pytest.fixture(autouse=True)
def restore():
    yield
    lib.fn_set_compact_cipher(1)
    lib.fn_set_large_cipher(1)


def choose(compact: int, large: int) -> None:
    lib.fn_set_compact_cipher(compact)
    lib.fn_set_large_cipher(large)


def open_batch(key: bytes, packets: list[bytes]) -> list[bytes | None]:
    """each packet's plaintext, None when refused: one fn_open_batch call with all of
    them (the same thread, so the same OpenSSL context one after the other), then one
    call per packet for its verdict (a refused slot and a good empty one both say 0)"""
    buf = ffi.new("uint8_t[]", STRIDE * len(packets))
    for i, p in enumerate(packets):
        ffi.memmove(buf + i * STRIDE, p, len(p))
    lens = ffi.new("uint32_t[]", [len(p) - 16 for p in packets])
    ok = lib.fn_open_batch(key, buf, STRIDE, lens, len(packets), 0)
    verdicts = []
    for p in packets:
        one = ffi.new("uint8_t[]", STRIDE)
        ffi.memmove(one, p, len(p))
        verdicts.append(lib.fn_open_batch(key, one, STRIDE, ffi.new("uint32_t[]", [len(p) - 16]), 1, 0) == 1)
    assert ok == sum(verdicts)
    return [bytes(ffi.buffer(buf + i * STRIDE + 16, len(p) - 32)) if verdicts[i] else None
            for i, p in enumerate(packets)]


def forgeries(good: bytes) -> list[bytes]:
    """tag, header (associated data: a counter bit, giving a fresh counter 256 on), first
    and last ciphertext byte, a truncation and an appended byte"""
    out = []
    for at in (len(good) - 1, len(good) - 16, 9, 16, len(good) - 17):
        if at >= 16 or at == 9:
            bad = bytearray(good)
            bad[at] ^= 0x01
            out.append(bytes(bad))
    return out + [good[:-1], good + b"\0"]


@pytest.mark.parametrize("sealer", CHOICES)
def test_sealed_by_one_choice_opens_with_every_other(sealer):
    key = os.urandom(32)
    payloads = [os.urandom(n) for n in LENGTHS]
    choose(*sealer)
    sealed = seal_batch(key, 7, payloads)
    for i, p in enumerate(payloads):
        assert sealed[i] == pynacl_seal(key, 0, 7 + i, p), (sealer, len(p))  # the wire: RFC 8439, as libsodium
    for opener in CHOICES:
        choose(*opener)
        assert open_batch(key, sealed) == payloads, (sealer, opener)


@pytest.mark.parametrize("opener", CHOICES)
def test_forgeries_are_refused_at_every_length_and_a_good_packet_after_each_opens(opener):
    # one batch: forgery, good, forgery, good ... so each failed open is followed by a
    # good packet on the same thread's contexts (OpenSSL's state after a failed tag)
    key = os.urandom(32)
    choose(*opener)
    packets, want = [], []
    for n in LENGTHS:
        p = os.urandom(n)
        good = pynacl_seal(key, 0, n, p)
        for bad in forgeries(good) + [pynacl_seal(os.urandom(32), 0, n, p)]:
            packets += [bad, good]
            want += [None, p]
    assert open_batch(key, packets) == want


def test_datagrams_shorter_than_a_tag_are_refused():
    for choice in CHOICES:
        choose(*choice)
        assert open_batch(os.urandom(32), [os.urandom(16 + n) for n in range(16)]) == [None] * 16


@pytest.mark.parametrize("opener", CHOICES)
def test_the_outside_path_counts_each_forgery_as_auth_failed_and_delivers_the_good_ones(opener):
    d = DataPath(NET, 1420)
    d.set_local(LEASE)
    d.set_peer(1, ipaddress.IPv4Network("10.87.2.0/24"))
    d.add_rx(RX_INDEX, 1, KEY_RX)
    choose(*opener)
    packets, want, counter = [], [], 0
    # IPv4 packet lengths across the three classes, up to the MTU
    for n in (28, SMALL_MAX - 1, SMALL_MAX, LARGE_MIN - 1, LARGE_MIN, LARGE_MIN + 1, 1420):
        ip = ipv4_udp("10.87.2.5", "10.87.1.9", os.urandom(n - 28))
        good = pynacl_seal(KEY_RX, RX_INDEX, counter, ip)
        counter += 1
        for bad in forgeries(good):
            packets.append(bad)
        packets.append(good)
        want.append(ip)
    delivered, _ = outside(d, packets)
    assert delivered == want
    drops = d.drops()
    # all forgeries: auth_failed, whatever code opened them (the flipped counter bit
    # gives a fresh counter, so the replay window does not see it first)
    assert drops["auth_failed"] == len(packets) - len(want), drops
    assert sum(drops.values()) == drops["auth_failed"], drops


@pytest.mark.parametrize("large", [1, 0])
@pytest.mark.parametrize("length", [100, 400, LARGE_MIN, 1400])
def test_a_wiped_session_key_leaves_no_copy_in_the_cipher_contexts(large, length):
    """Regression (aeadreview): the data path wipes a session key when it goes
    (fn_peer_remove, fn_peer_tx_clear, a promoted next key). OpenSSL's contexts kept the
    last key they were given, one per thread for sealing and one for opening, until
    the thread's next long packet: an idle engine kept a removed session's key in
    memory. Failed on main before the fix (copies found at 576 and 1400 bytes)."""
    choose(1, large)
    first, second = os.urandom(16), os.urandom(16)
    key = ffi.new("uint8_t[32]")
    ffi.memmove(key, first, 16)
    ffi.memmove(key + 16, second, 16)
    buf = ffi.new("uint8_t[]", 4096)
    lens = ffi.new("uint32_t[]", [length])
    lib.fn_seal_batch(key, 1, buf, 4096, lens, 1, 0)
    lens[0] = length + 16
    assert lib.fn_open_batch(key, buf, 4096, lens, 1, 0) == 1
    lens[0] = length + 16
    assert lib.fn_open_batch(key, buf, 4096, lens, 1, 0) == 0  # and a failed open (now plaintext: a forgery)
    ffi.memmove(key, bytes(32), 32)  # what fn_peer_remove does with the data path's copy
    assert pairs_in_memory([(first, second)]) == 0
