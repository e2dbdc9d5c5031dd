"""cffi (API mode) build of the data-path C module, linked to the system libsodium.

Used by setup.py (cffi_modules) and runnable directly: `python engine/crypto/_build.py`
builds engine/crypto/_fastpath*.so in place.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
ROOT = os.path.dirname(os.path.dirname(HERE))


def _src(name: str) -> str:
    # setuptools >= 77 refuses absolute source paths: relative to the repository root when
    # setup.py imports this module (the build runs there); absolute for the direct run
    # below, where cffi compiles from its own temporary directory
    path = os.path.join(CSRC, name)
    return path if __name__ == "__main__" else os.path.relpath(path, ROOT)


ffibuilder = FFI()
with open(os.path.join(CSRC, "fastpath.h")) as f:
    # the header is written to be cdef-able: only the part between the markers
    header = f.read()
    ffibuilder.cdef(header.split("/* CDEF-BEGIN */")[1].split("/* CDEF-END */")[0])
ffibuilder.set_source(
    "engine.crypto._fastpath",
    '#include "fastpath.h"',
    sources=[_src(f) for f in ("fastpath.c", "inside.c", "outside.c", "offload.c", "gro.c", "firewall.c", "idle.c",
                               "aead_small.c", "cookie.c")],
    include_dirs=[CSRC],
    libraries=["sodium"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=os.path.join(root, "build", "cffi"), target=None, verbose=False)
    # compile() writes into tmpdir/engine/crypto: move the .so next to this file
    import glob, shutil
    for so in glob.glob(os.path.join(root, "build", "cffi", "engine", "crypto", "_fastpath*.so")):
        # copy then rename: overwriting a loaded .so in place crashes its users
        target = os.path.join(HERE, os.path.basename(so))
        shutil.copy2(so, target + ".tmp")
        os.replace(target + ".tmp", target)
