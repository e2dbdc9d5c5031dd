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
from tests.harness.memscan import pairs_in_memory  # noqa: E402

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


def _aes256_round_keys(key: bytes) -> list[bytes]:
    """FIPS 197 5.2, here so the test does not trust the code it tests"""
    exp, log = [0] * 255, [0] * 256
    x = 1
    for i in range(255):                # 3 generates GF(2^8)*
        exp[i], log[x] = x, i
        x ^= (x << 1) ^ (0x11b if x & 0x80 else 0)
    sbox = []
    for a in range(256):
        b = exp[(255 - log[a]) % 255] if a else 0
        s = b
        for r in range(1, 5):
            s ^= ((b << r) | (b >> (8 - r))) & 0xff
        sbox.append(s ^ 0x63)
    w = [list(key[i:i + 4]) for i in range(0, 32, 4)]
    rcon = 1
    for i in range(8, 60):
        t = list(w[i - 1])
        if i % 8 == 0:
            t = [sbox[v] for v in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = (rcon << 1) ^ (0x11b if rcon & 0x80 else 0)
        elif i % 8 == 4:
            t = [sbox[v] for v in t]
        w.append([a ^ b for a, b in zip(w[i - 8], t)])
    return [bytes(sum(w[4 * r:4 * r + 4], [])) for r in range(15)]


def test_the_round_key_helper_is_fips_197():
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    assert _aes256_round_keys(key)[14] == bytes.fromhex("fe4890d1e6188d0b046df344706c631e")  # FIPS 197 A.3


@pytest.mark.parametrize("length", [15, 100, 1400, 4096])
@pytest.mark.parametrize("op", ["seal", "open", "forgery"])
def test_no_round_key_is_left_on_the_stack_after_a_packet(op, length):
    """A data-path thread seals, opens or refuses one packet under a session key, then
    the session goes (its context freed: wiped). The key must not stay in memory: not
    in the context, and not in registers the compiler spilled to the thread's stack (a
    spill outlives the call, until something deeper overwrites it). The thread has
    ended here; glibc keeps its stack, unwiped, for the next thread, so what the cipher
    left there is still to be found. Failed before the fix (review vaesreview): round
    key 13 of the session, as a ymm register (twice in a row), after the seals of 100
    and 1400 bytes; OpenSSL's code leaves none."""
    import threading
    key = os.urandom(32)
    buf = ffi.new("uint8_t[]", 16 + length + 16)
    lens = ffi.new("uint32_t[1]", [length])

    def seal():
        lens[0] = length
        assert lib.fn_seal_batch(key, 7, buf, len(buf), lens, 1, lib.FN_CIPHER_AES256GCM) == 1

    def open_(want):
        lens[0] = length + 16
        assert lib.fn_open_batch(key, buf, len(buf), lens, 1, lib.FN_CIPHER_AES256GCM) == want

    seal()
    open_(1)        # the lazy PLT bindings resolved first (the dynamic linker saves ymm registers on the stack)
    seal()
    if op == "forgery":
        buf[20] ^= 1
    t = threading.Thread(target={"seal": seal, "open": lambda: open_(1), "forgery": lambda: open_(0)}[op])
    t.start()
    t.join()
    assert pairs_in_memory([(k, k) for k in _aes256_round_keys(key)]) == 0


def test_no_key_material_or_keystream_is_left_on_the_stack_at_any_length():
    """The same for every secret the VAES code holds (round keys, H and its powers, the
    keystream), payloads of 0..9000 bytes and associated data of 0..600: a small C
    program built as the module is (gcc -O2) looks below its stack pointer after each
    call (tests/unit/engine/vaes_stack_probe.c). Failed before the fix: 5,517 finds
    (round key 13 after every seal, round key 11 after opens below 256 bytes, and the
    hash key powers after associated data of 256 bytes and more)."""
    import shutil
    import tempfile
    cc = os.environ.get("CC", "gcc")
    if not shutil.which(cc):
        pytest.fail(f"{cc} is needed (Debian: apt-get install gcc)")
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "probe")
        subprocess.run([cc, "-O2", "-I", os.path.join(ROOT, "engine", "crypto", "csrc"),
                        os.path.join(here, "vaes_stack_probe.c"), "-o", exe, "-lsodium"], check=True, timeout=120)
        p = subprocess.run([exe], env=dict(os.environ, LD_BIND_NOW="1"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:]
