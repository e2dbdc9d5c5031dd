"""The only package that knows about cffi: the C data path and its thin wrappers."""
from __future__ import annotations

from flatnet.engine.crypto._fastpath import ffi, lib

EXPECTED_VERSION = 25

if lib.fn_version() != EXPECTED_VERSION:  # a stale build would silently misbehave
    raise ImportError(f"flatnet.engine.crypto._fastpath is version {lib.fn_version()}, expected "
                      f"{EXPECTED_VERSION}: rebuild with `python engine/crypto/_build.py`")
# libsodium stays on its slow portable code until sodium_init() has run
if lib.fn_init() < 0:
    raise ImportError("sodium_init() failed")

__all__ = ["ffi", "lib"]
