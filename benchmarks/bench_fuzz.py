"""Fuzz the C data path under ASan and UBSan: generated packets through every parser of
both pipelines (engine/crypto/csrc/fuzz.c), the compact cipher against libsodium, and
AES-256-GCM as the data path runs it (the VAES code where the CPU has it) against OpenSSL's
EVP interface.

    python3 -m benchmarks fuzz --n 1000000

The sanitizer module (engine.crypto._fastpath_fuzz, built into build/fuzz/ when a C
source is newer) runs in a child process with libasan preloaded; a sanitizer report
there ends the child, and is counted and printed here. Exit status 0 only with no
report, no invariant failure and no cipher mismatch.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "engine", "crypto", "csrc")
REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer")
CHUNK = 50_000


class FuzzSetupError(RuntimeError):
    """The toolchain cannot build or run the sanitizer module (the message says what to install)."""


@dataclass
class Outcome:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    reports: list[str] = field(default_factory=list)   # the first line of each sanitizer report


def libasan() -> str:
    """The ASan runtime the compiler links against: it must be loaded before Python."""
    cc = os.environ.get("CC", "gcc")
    try:
        path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise FuzzSetupError(f"cannot ask {cc} for libasan ({exc}): install gcc and libasan8 "
                             "(Debian 12: apt-get install gcc libasan8 libubsan1)") from None
    if not os.path.isabs(path) or not os.path.exists(path):
        raise FuzzSetupError(f"{cc} has no libasan.so (it answered {path!r}): install libasan8 and libubsan1 "
                             "(Debian 12: apt-get install libasan8 libubsan1)")
    return os.path.realpath(path)


def module(rebuild: bool = False) -> str:
    """The sanitizer module's path, built first when missing or older than a C source."""
    sys.path.insert(0, ROOT)
    from flatnet.engine.crypto import _build
    path = _build.fuzz_module_path()
    newest = max(os.path.getmtime(os.path.join(CSRC, f)) for f in os.listdir(CSRC))
    if rebuild or path is None or os.path.getmtime(path) < newest:
        try:
            path = _build.build_fuzz()
        except Exception as exc:  # cffi raises VerificationError, distutils CompileError, ...
            raise FuzzSetupError(f"sanitizer build failed: {exc}") from None
    return path


def sanitized(code: str, timeout: float, rebuild: bool = False) -> Outcome:
    """Run `code` in a child with libasan preloaded; it sees `ffi` and `lib` of the
    sanitizer module. Reports are found in its stderr."""
    path = module(rebuild)
    env = dict(os.environ, LD_PRELOAD=libasan(), PYTHONPATH=ROOT,
               # Python itself leaks by design; abort on the first error, report on stderr
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87")
    prologue = (
        "import importlib.machinery, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('flatnet.engine.crypto._fastpath_fuzz', {path!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "ffi, lib = mod.ffi, mod.lib\n"
        "assert lib.fn_init() >= 0\n"
    )
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", prologue + code], env=env, capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = -9, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = ((exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) + \
            f"\nfuzz: timed out after {timeout} s"
    seconds = time.monotonic() - t0
    if "ASan runtime does not come first" in err or "interceptors" in err and rc != 0 and not REPORT.search(err):
        raise FuzzSetupError(f"the sanitizer runtime did not load: {err.strip()[:400]}")
    reports = [line.strip() for line in err.splitlines() if REPORT.search(line)]
    return Outcome(rc, seconds, out, err, reports)


CHILD = """
import json, time
st = ffi.new("fn_fuzz_stats *")
t0 = time.monotonic()
done_aead = 0
while done_aead < {aead}:
    k = min({chunk}, {aead} - done_aead)
    lib.fn_fuzz_aead({seed} + done_aead, k, st)
    done_aead += k
t_aead = time.monotonic() - t0
done = 0
while done < {n}:
    k = min({chunk}, {n} - done)
    if lib.fn_fuzz_packets({seed} + 1000003 * (done // {chunk} + 1), k, st) < 0:
        raise SystemExit("fuzz: setup failed (socketpair, /dev/null or memory)")
    done += k
    print(json.dumps({{"progress": done}}), flush=True)
names = {names!r}
print(json.dumps({{"result": {{
    "inputs": st.outside_inputs + st.inside_inputs, "outside_buffers": st.outside_inputs,
    "outside_datagrams": st.outside_datagrams, "inside_packets": st.inside_inputs,
    "delivered": st.delivered, "sealed": st.sealed, "handed_up": st.handed_up, "forwarded": st.forwarded,
    "gso_runs": st.gso_runs,
    "aead_cases": st.aead_cases, "aead_mismatches": st.aead_mismatches, "aes_cases": st.aes_cases,
    "aes_impl": lib.fn_aes_gcm_impl(),
    "invariant_failures": st.invariant_failures, "aead_seconds": t_aead,
    "packet_seconds": time.monotonic() - t0 - t_aead,
    "drops": {{name: st.drops[i] for i, name in names.items()}}}}}}), flush=True)
"""


def run(n: int, aead: int, seed: int = 1, timeout: float = 3600, rebuild: bool = False) -> tuple[Outcome, dict]:
    """n packet inputs and `aead` cipher cases; the child's figures ({} if it died)."""
    from flatnet.engine.datapath import DROP_REASONS
    code = CHILD.format(n=n, aead=aead, seed=seed, chunk=CHUNK, names=dict(DROP_REASONS))
    outcome = sanitized(code, timeout, rebuild)
    result: dict = {}
    for line in outcome.stdout.splitlines():
        if line.startswith('{"result"'):
            result = json.loads(line)["result"]
    return outcome, result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="packet inputs (default 1,000,000)")
    p.add_argument("--aead", type=int, help="compact-cipher cases against libsodium (default: --n)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600, help="seconds before the run counts as failed")
    p.add_argument("--rebuild", action="store_true", help="build the sanitizer module even if it looks current")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    try:
        outcome, r = run(a.n, a.n if a.aead is None else a.aead, a.seed, a.timeout, a.rebuild)
    except FuzzSetupError as exc:
        print(f"fuzz: cannot run: {exc}", file=sys.stderr)
        return 2
    if outcome.reports or not r:
        print(outcome.stderr[-6000:], file=sys.stderr)
    else:
        for line in outcome.stderr.splitlines():
            if line.startswith(("fuzz: INVARIANT", "fuzz: AEAD")):
                print(line, file=sys.stderr)
    if r:
        print(f"rounds             {a.n:,}")
        print(f"packet inputs      {r['inputs']:,} ({r['outside_buffers']:,} receive buffers = "
              f"{r['outside_datagrams']:,} datagrams; {r['inside_packets']:,} TUN packets) in "
              f"{r['packet_seconds']:.1f} s")
        print(f"reached            {r['delivered']:,} TUN writes, {r['sealed']:,} datagrams sealed, "
              f"{r['handed_up']:,} control items, {r['forwarded']:,} relayed in C "
              f"({r['gso_runs']:,} UDP GSO sends)")
        print(f"drops              {', '.join(f'{k}={v:,}' for k, v in r['drops'].items() if v) or 'none'}")
        impl = {0: "none", 1: "openssl", 2: "vaes"}.get(r["aes_impl"], "?")
        print(f"cipher cases       {r['aead_cases']:,} against libsodium, {r['aes_cases']:,} of them also "
              f"AES-256-GCM ({impl}) against OpenSSL EVP, in {r['aead_seconds']:.1f} s, "
              f"{r['aead_mismatches']} mismatches")
        print(f"invariant failures {r['invariant_failures']}")
    print(f"sanitizer reports  {len(outcome.reports)}{': ' + outcome.reports[0] if outcome.reports else ''}")
    print(f"seconds            {outcome.seconds:.1f} (seed {a.seed}, exit {outcome.returncode})")
    if a.json and r:
        from benchmarks.report import write_json
        write_json(a.json, "fuzz", dict(r, reports=len(outcome.reports), seconds=outcome.seconds, seed=a.seed))
    ok = outcome.returncode == 0 and not outcome.reports and r and not r["aead_mismatches"] \
        and not r["invariant_failures"]
    return 0 if ok else 1
