"""A short run of the data path's fuzz harness under ASan and UBSan (the long one is
`python3 -m benchmarks fuzz --n 1000000`): 20,000 generated rounds through both
pipelines, and 20,000 cases of the compact cipher against libsodium.

It needs gcc and libasan (Debian: libasan8, libubsan1); without them it fails and says
so, it does not skip. Before the TSO slot fix this run died in ASan at round 1,426
(heap-buffer-overflow in tso_segment, past the out arena); without the destination
check it counted 419 packets outside the lease reaching the TUN."""
import pytest

from benchmarks import bench_fuzz


def test_a_short_fuzz_run_finds_nothing():
    try:
        outcome, r = bench_fuzz.run(n=20_000, aead=20_000, seed=1, timeout=600)
    except bench_fuzz.FuzzSetupError as exc:
        pytest.fail(f"the sanitizer build cannot run here: {exc}")
    assert outcome.reports == [], outcome.stderr[-4000:]
    assert outcome.returncode == 0, outcome.stderr[-4000:]
    assert r["invariant_failures"] == 0 and r["aead_mismatches"] == 0, outcome.stderr[-2000:]
    assert r["aead_cases"] == 20_000
    # AES-256-GCM as the data path runs it (aes_gcm_vaes.c on a CPU with VAES), one case each
    from flatnet.engine.datapath import aes_gcm_available, aes_gcm_impl
    assert r["aes_cases"] == (20_000 if aes_gcm_available() else 0)
    assert r["aes_impl"] == {"none": 0, "openssl": 1, "vaes": 2}[aes_gcm_impl()]
    # the generator reaches past authentication: packets delivered, sealed, and
    # dropped by every check that comes after the AEAD
    assert r["delivered"] > 1000 and r["sealed"] > 1000
    for reason in ("source_not_allowed", "destination_not_allowed", "firewall", "not_ipv4", "too_big", "replay"):
        assert r["drops"][reason] > 0, reason


def test_a_sanitizer_report_is_found_and_counted():
    """The runner itself: a read past a buffer in the child is reported, not missed."""
    outcome = bench_fuzz.sanitized("buf = ffi.new('uint8_t[]', 4)\n"
                                   "lib.fn_aead_small_open(bytes(32), bytes(12), ffi.NULL, 0, buf, 40)\n", 120)
    assert outcome.returncode != 0
    assert outcome.reports and "AddressSanitizer" in outcome.reports[0]
