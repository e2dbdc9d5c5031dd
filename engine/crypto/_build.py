"""cffi (API mode) build of the data-path C module, linked to the system libsodium and
OpenSSL's libcrypto (aead_large.c, aead_aes.c). aes_gcm_vaes.c compiles its AVX2/VAES code
with a target pragma of its own, not global -m flags: the module still loads on older CPUs.

Used by setup.py (cffi_modules) and runnable directly: `python engine/crypto/_build.py`
builds engine/crypto/_fastpath*.so in place.

`python engine/crypto/_build.py --fuzz` builds the sanitizer module instead: the same
sources plus the fuzz harness (csrc/fuzz.c), with ASan and UBSan, as
engine.crypto._fastpath_fuzz into build/fuzz/ (never next to the engine's module, and
under another name, so it cannot replace it). It runs only with libasan preloaded
(benchmarks/bench_fuzz.py does that in a child process).
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
ROOT = os.path.dirname(os.path.dirname(HERE))


def _src(name: str, absolute: bool) -> str:
    # setuptools >= 77 refuses absolute source paths: relative to the repository root when
    # setup.py imports this module (the build runs there); absolute when cffi compiles
    # from its own temporary directory (the direct run below, the sanitizer build)
    path = os.path.join(CSRC, name)
    return path if absolute else os.path.relpath(path, ROOT)


SOURCES = ("fastpath.c", "inside.c", "outside.c", "offload.c", "gro.c", "firewall.c", "idle.c", "aead_small.c",
           "aead_large.c", "aead_aes.c", "aes_gcm_vaes.c", "cookie.c", "senders.c", "relay.c")
FUZZ_DIR = os.path.join(ROOT, "build", "fuzz")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _cdef(name: str) -> str:
    # the headers are written to be cdef-able: only the part between the markers
    with open(os.path.join(CSRC, name)) as f:
        return f.read().split("/* CDEF-BEGIN */")[1].split("/* CDEF-END */")[0]


def make_builder(fuzz: bool = False) -> FFI:
    builder = FFI()
    builder.cdef(_cdef("fastpath.h") + (_cdef("fuzz.h") if fuzz else ""))
    builder.set_source(
        "flatnet.engine.crypto._fastpath_fuzz" if fuzz else "flatnet.engine.crypto._fastpath",
        '#include "fastpath.h"\n' + ('#include "fuzz.h"\n' if fuzz else ""),
        sources=[_src(f, fuzz or __name__ == "__main__") for f in SOURCES + (("fuzz.c",) if fuzz else ())],
        include_dirs=[CSRC],
        libraries=["sodium", "crypto"],
        extra_compile_args=(["-O1", "-g", "-DFN_FUZZ"] + SANITIZE if fuzz else ["-O2"])
        + ["-Wall", "-Wno-unused-function"],
        extra_link_args=SANITIZE if fuzz else [],
    )
    return builder


ffibuilder = make_builder()


def fuzz_module_path() -> str | None:
    """The sanitizer module built by `--fuzz`, or None."""
    import glob
    found = glob.glob(os.path.join(FUZZ_DIR, "flatnet", "engine", "crypto", "_fastpath_fuzz*.so"))
    return found[0] if found else None


def build_fuzz() -> str:
    """Build in a directory of its own, then rename into place: two test runs that
    build at once do not read each other's half-written files."""
    import glob, shutil, tempfile
    os.makedirs(FUZZ_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="work-", dir=FUZZ_DIR)
    try:
        make_builder(fuzz=True).compile(tmpdir=work, target=None, verbose=False)
        built = glob.glob(os.path.join(work, "flatnet", "engine", "crypto", "_fastpath_fuzz*.so"))
        if not built:
            raise RuntimeError(f"the sanitizer build left no module in {work}")
        target = os.path.join(FUZZ_DIR, "flatnet", "engine", "crypto", os.path.basename(built[0]))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(built[0], target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if "--fuzz" in sys.argv[1:]:
        print(build_fuzz())
        sys.exit(0)
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), target=None, verbose=False)
    # compile() writes into tmpdir/flatnet/engine/crypto: move the .so next to this file
    import glob, shutil
    for so in glob.glob(os.path.join(ROOT, "build", "cffi", "flatnet", "engine", "crypto", "_fastpath*.so")):
        # copy then rename: overwriting a loaded .so in place crashes its users
        target = os.path.join(HERE, os.path.basename(so))
        shutil.copy2(so, target + ".tmp")
        os.replace(target + ".tmp", target)
