"""Batch seal/open in C (one call per batch) against one PyNaCl call per packet, at 64
and 1400 bytes: what the data path gains by keeping per-packet work out of Python.
The C rows run once per transport cipher: ChaCha20-Poly1305, and AES-256-GCM where this
host can offer it (one context for the batch, as the data path keeps one per session key)."""
from __future__ import annotations

import argparse
import os
import time

from nacl import bindings as sodium

from benchmarks.report import table, write_json
from flatnet.engine.crypto import ffi, lib


def bench_c(size: int, batch: int, seconds: float, cipher: int = 0) -> tuple[float, float]:
    key = os.urandom(32)
    stride = (16 + size + 16 + 63) & ~63
    buf = ffi.new("uint8_t[]", stride * batch)
    lens = ffi.new("uint32_t[]", [size] * batch)
    n, counter = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        lib.fn_seal_batch(key, counter, buf, stride, lens, batch, cipher)
        counter += batch
        n += batch
    seal_pps = n / (time.perf_counter() - t0)
    olens = ffi.new("uint32_t[]", [size + 16] * batch)
    lib.fn_seal_batch(key, 0, buf, stride, lens, batch, cipher)
    snapshot = ffi.buffer(buf)[:]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ffi.memmove(buf, snapshot, len(snapshot))
        for i in range(batch):
            olens[i] = size + 16
        ok = lib.fn_open_batch(key, buf, stride, olens, batch, cipher)
        assert ok == batch
        n += batch
    return seal_pps, n / (time.perf_counter() - t0)


def bench_pynacl(size: int, seconds: float) -> tuple[float, float]:
    key, payload = os.urandom(32), os.urandom(size)
    header = bytes([3, 2, 0, 0]) + bytes(12)  # the wire header is the associated data, as in C
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for c in range(256):
            sodium.crypto_aead_chacha20poly1305_ietf_encrypt(payload, header, b"\0" * 4 + c.to_bytes(8, "little"),
                                                             key)
        n += 256
    seal_pps = n / (time.perf_counter() - t0)
    ct = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(payload, header, b"\0" * 12, key)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(256):
            sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ct, header, b"\0" * 12, key)
        n += 256
    return seal_pps, n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fastpath", description=__doc__)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json")
    a = p.parse_args(argv)
    rows, data = [], {}
    ciphers = [("chacha20-poly1305", lib.FN_CIPHER_CHACHA)]
    if lib.fn_aes_gcm_available():
        ciphers.append(("aes-256-gcm", lib.FN_CIPHER_AES256GCM))
    for size in (64, 1400):
        ps, po = bench_pynacl(size, a.seconds)
        for name, cipher in ciphers:
            cs, co = bench_c(size, a.batch, a.seconds, cipher)
            key = size if name == "chacha20-poly1305" else f"{size}-{name}"
            data[key] = {"c_seal_pps": cs, "c_open_pps": co, "pynacl_seal_pps": ps, "pynacl_open_pps": po}
            rows.append([size, name, f"{cs / 1e3:.0f}", f"{co / 1e3:.0f}", f"{ps / 1e3:.0f}", f"{po / 1e3:.0f}",
                         f"{cs / ps:.1f}x", f"{cs * size * 8 / 1e9:.2f}"])
    print(table(["bytes", "C cipher", "C seal kpps", "C open kpps", "PyNaCl seal kpps", "PyNaCl open kpps", "seal speed-up",
                 "C seal Gbit/s"], rows))
    print(f"\none core, batches of {a.batch}, {a.seconds} s per cell")
    write_json(a.json, "fastpath", data)
    return 0
