"""OPENSSL_ia32cap hiding AES-NI or PCLMULQDQ from OpenSSL stops the engine offering
AES-256-GCM (OpenSSL's fallback is table code: slow, not constant-time). The reading
of the variable is checked against OpenSSL itself (`openssl version -c` prints the
capability words it ended up with)."""
import os
import random
import shutil
import subprocess

import pytest

from flatnet.engine.datapath import openssl_ia32cap_keeps_aes

AESNI_PCLMUL = (1 << 57) | (1 << 33)


def openssl_keeps(value: str) -> bool:
    out = subprocess.run(["openssl", "version", "-c"], env={**os.environ, "OPENSSL_ia32cap": value},
                         capture_output=True, text=True, check=True, timeout=10).stdout
    word = int(out.split("OPENSSL_ia32cap=")[1].split(":")[0], 16)
    return word & AESNI_PCLMUL == AESNI_PCLMUL


def test_unset_keeps_aes():
    assert openssl_ia32cap_keeps_aes(None)


@pytest.mark.parametrize("value,keeps", [
    ("~0x200000200000000", False),  # the documented way to hide AES-NI and PCLMULQDQ
    ("~0x200000000000000", False),  # AES-NI alone
    ("~0x200000000", False),        # PCLMULQDQ alone
    ("~0x1000000", False),          # FXSR: OpenSSL then masks both
    ("~0x2000000", True),           # SSE: neither
    ("", False), ("junk", False), ("0x0:0", False),  # a value replaces the CPU's bits
    ("0x200000200000000", True), (":~0x20", True), ("~junk", True), ("~0", True),
])
def test_values(value, keeps):
    assert openssl_ia32cap_keeps_aes(value) is keeps


def test_read_as_openssl_reads_it():
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing (Debian package openssl); the test needs it")
    if not openssl_keeps("~0"):
        pytest.skip("this CPU has no AES-NI/PCLMULQDQ: nothing to hide")
    rng = random.Random(7)
    values = ["", "0", "~", ":", "~:", "0x", "~0x", "010", "~0200000000000000000000", "~0x200000000000000junk",
              "0x200000200000000", "0X200000200000000", "~0X200000000", "18446744073709551615", "~18446744073709551616",
              "99999999999999999999999", "~0x1000000", "~0x2000000", "0x2000002000000001:0x0", " 0x1"]
    for _ in range(20):
        bits = rng.getrandbits(64) & ~rng.choice([0, 1 << 57, 1 << 33, AESNI_PCLMUL, 1 << 24])
        values.append(rng.choice(["~", ""]) + rng.choice([hex(bits), str(bits), "0" + oct(bits)[2:]]))
    for value in values:
        assert openssl_ia32cap_keeps_aes(value) is openssl_keeps(value), value
