"""AES-256-GCM as an attacker sees it (aead_aes.c, with aes_gcm_vaes.c where the CPU has
VAES, and with OpenSSL's code under FLATNET_AES_IMPL=openssl): every buffer flush
against an unmapped page (the VAES code loads 32 bytes at a time: one byte too many at
the end of a datagram is a crash, a remote denial of service), the counter carrying
into its higher bytes, and forgeries refused with nothing left in the output. The
guard-page sweeps run in a child process per implementation, so a SIGSEGV fails the
test instead of ending the run."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from flatnet.engine.crypto import ffi, lib  # noqa: E402
from flatnet.engine.datapath import aes_gcm_available  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
pytestmark = pytest.mark.skipif(not aes_gcm_available(), reason="AES-256-GCM is not offered on this CPU")

# every length to 300 (the partial last block and the tail of 1..15 pairs), the edges of
# the 256-byte chunk, MTU-sized packets, the 4096-byte page, and the largest datagrams
LENGTHS = sorted(set(range(301)) | {479, 480, 481, 511, 512, 513, 767, 768, 769, 1023, 1024, 1025, 1379, 1380,
                                    1400, 1420, 1424, 1436, 1452, 4079, 4080, 4095, 4096, 4097, 8191, 8192,
                                    9000, 65503, 65504, 65519, 65520, 65535})


def _nonce(counter: int) -> bytes:
    """docs/protocol.md 6.1: four zero bytes, then the counter, little-endian"""
    return bytes(4) + counter.to_bytes(8, "little")


def sweep_apart(seed: int) -> None:
    """fn_aes_crypt with its input, output, associated data and tag each flush against
    an unmapped page, after or before."""
    from tests.harness.guardpage import Guarded
    rng = random.Random(seed)
    for length in LENGTHS:
        key, nonce, ad, pt = rng.randbytes(32), rng.randbytes(12), rng.randbytes(16), rng.randbytes(length)
        sealed = AESGCM(key).encrypt(nonce, pt, ad)
        for at_start in (False, True):
            with Guarded(length, at_start) as src, Guarded(length + 16, at_start) as dst, \
                    Guarded(16, at_start) as a:
                src.put(pt)
                a.put(ad)
                n = lib.fn_aes_crypt(1, key, nonce, a.ptr, 16, src.ptr, dst.ptr, length)
                assert n == length + 16 and dst.get(n) == sealed, (length, at_start)
            with Guarded(length + 16, at_start) as src, Guarded(length, at_start) as dst, \
                    Guarded(16, at_start) as a:
                src.put(sealed)
                a.put(ad)
                assert lib.fn_aes_crypt(0, key, nonce, a.ptr, 16, src.ptr, dst.ptr, length + 16) == length
                assert dst.get(length) == pt, (length, at_start)
                src.put(bytes([sealed[-1] ^ 0x80]), length + 15)          # the tag's last byte
                assert lib.fn_aes_crypt(0, key, nonce, a.ptr, 16, src.ptr, dst.ptr, length + 16) == -1
                assert dst.get(length) == bytes(length), (length, at_start)


def sweep_data_path(seed: int) -> None:
    """The data path's own calls (aes_seal / aes_open through fn_seal_batch and
    fn_open_batch: header as associated data, sealed and opened in place) on a datagram
    whose tag ends at, or whose header begins at, an unmapped page."""
    from tests.harness.guardpage import Guarded
    rng = random.Random(seed)
    for length in LENGTHS:
        key, pt, counter = rng.randbytes(32), rng.randbytes(length), rng.randrange(1 << 60)
        size = 16 + length + 16
        lens = ffi.new("uint32_t[1]")
        for at_start in (False, True):
            with Guarded(size, at_start) as g:
                g.put(pt, 16)
                lens[0] = length
                assert lib.fn_seal_batch(key, counter, g.ptr, size, lens, 1, lib.FN_CIPHER_AES256GCM) == 1
                header = g.get(16)
                assert g.get(length + 16, 16) == AESGCM(key).encrypt(_nonce(counter), pt, header), length
                lens[0] = length + 16
                assert lib.fn_open_batch(key, g.ptr, size, lens, 1, lib.FN_CIPHER_AES256GCM) == 1
                assert lens[0] == length and g.get(length, 16) == pt, (length, at_start)
                # an attacker's copy with one bit changed: refused, and the bytes wiped in place
                sealed = AESGCM(key).encrypt(_nonce(counter), pt, header)
                g.put(sealed, 16)
                where = rng.randrange(16 + length + 16)
                g.put(bytes([g.get(1, where)[0] ^ (1 << rng.randrange(8))]), where)
                lens[0] = length + 16
                assert lib.fn_open_batch(key, g.ptr, size, lens, 1, lib.FN_CIPHER_AES256GCM) == 0
                assert lens[0] == 0 and g.get(length, 16) == bytes(length), (length, at_start, where)


def sweep_associated_data(seed: int) -> None:
    """Associated data of every length to 300 (and 4099) flush against an unmapped page."""
    from tests.harness.guardpage import Guarded
    rng = random.Random(seed)
    for adlen in list(range(301)) + [511, 512, 513, 4099]:
        for length in (0, 1, 17, 300):
            key, nonce, ad, pt = rng.randbytes(32), rng.randbytes(12), rng.randbytes(adlen), rng.randbytes(length)
            sealed = AESGCM(key).encrypt(nonce, pt, ad)
            for at_start in (False, True):
                with Guarded(adlen, at_start) as a:
                    a.put(ad)
                    buf = ffi.new("uint8_t[]", length + 16)
                    ffi.memmove(buf, pt, length)
                    assert lib.fn_aes_crypt(1, key, nonce, a.ptr, adlen, buf, buf, length) == length + 16
                    assert bytes(buf) == sealed, (adlen, length)
                    assert lib.fn_aes_crypt(0, key, nonce, a.ptr, adlen, buf, buf, length + 16) == length
                    assert bytes(buf)[:length] == pt


SWEEPS = {"apart": sweep_apart, "data_path": sweep_data_path, "associated_data": sweep_associated_data}


@pytest.mark.parametrize("impl", ["", "openssl"])
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_no_byte_is_read_or_written_outside_the_buffers(sweep, impl):
    code = ("import sys\nfrom flatnet.engine.datapath import aes_gcm_impl\n"
            "from tests.unit.engine import test_aes_gcm_attacks as t\n"
            f"t.SWEEPS[{sweep!r}](1)\nprint(aes_gcm_impl())\n")
    env = dict(os.environ, FLATNET_AES_IMPL=impl)
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"child ended with {p.returncode} (-11: SIGSEGV at a guard page)\n{p.stderr[-3000:]}"
    assert p.stdout.split()[-1] in (["openssl"] if impl else ["openssl", "vaes"])


def test_the_counter_carries_into_its_third_byte():
    """The data's counter blocks start at 2; block 65534 has the counter 0x00010000, whose
    32-bit big-endian increment carries from byte 14 into byte 13 (a per-byte or 16-bit
    add would get it wrong). 1 MiB and a bit, with a partial last block."""
    rng = random.Random(65536)
    for length in (65534 * 16 - 5, 65534 * 16 + 16 * 18 + 7):
        key, nonce, ad, pt = rng.randbytes(32), rng.randbytes(12), rng.randbytes(16), rng.randbytes(length)
        # a nonce whose last byte is 0xff too: the counter is the last 4 bytes only
        nonce = nonce[:11] + b"\xff"
        sealed = AESGCM(key).encrypt(nonce, pt, ad)
        buf = ffi.new("uint8_t[]", length + 16)
        ffi.memmove(buf, pt, length)
        assert lib.fn_aes_crypt(1, key, nonce, ad, 16, buf, buf, length) == length + 16
        got = bytes(buf)
        first_bad = next((i for i in range(0, len(got), 16) if got[i:i + 16] != sealed[i:i + 16]), None)
        assert first_bad is None, f"length {length}: first differing block {first_bad // 16}"
        assert lib.fn_aes_crypt(0, key, nonce, ad, 16, buf, buf, length + 16) == length
        assert bytes(buf)[:length] == pt


def test_the_tag_check_looks_at_every_bit():
    """A forger who gets 127 of the 128 tag bits right is refused, whichever bit is wrong
    (a check of fewer bytes, or of a 64-bit half, would let a forgery through)."""
    rng = random.Random(128)
    key, nonce, ad, pt = rng.randbytes(32), rng.randbytes(12), rng.randbytes(16), rng.randbytes(1400)
    sealed = AESGCM(key).encrypt(nonce, pt, ad)
    for bit in range(128):
        bad = bytearray(sealed)
        bad[1400 + bit // 8] ^= 1 << (bit % 8)
        buf = ffi.new("uint8_t[]", bytes(bad))
        assert lib.fn_aes_crypt(0, key, nonce, ad, 16, buf, buf, len(bad)) == -1, bit
        assert bytes(buf)[:1400] == bytes(1400), bit


def test_the_guard_pages_catch_a_read_one_byte_too_far():
    """The sweeps above would see an overrun: a length one byte longer than the buffer
    ends the child with SIGSEGV."""
    code = ("from tests.harness.guardpage import Guarded\nfrom flatnet.engine.crypto import lib\n"
            "src, dst = Guarded(100), Guarded(200)\n"
            "lib.fn_aes_crypt(1, bytes(32), bytes(12), b'', 0, src.ptr, dst.ptr, 101)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == -11, (p.returncode, p.stderr[-2000:])

