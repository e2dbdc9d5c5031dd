"""Buffers that end exactly where an unmapped (PROT_NONE) page begins, or begin right
after one: a C function that reads or writes one byte past either end of such a buffer
dies with SIGSEGV, even without a sanitizer. For tests of code that uses wide loads
(the AES-GCM code's 32-byte loads), run them in a child process: a crash is then a
failed test, not a dead test run."""
from __future__ import annotations

import ctypes
import mmap

from flatnet.engine.crypto import ffi

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE = mmap.PAGESIZE
PROT_NONE = 0  # <sys/mman.h>; the mmap module has no name for it


class Guarded:
    """`size` bytes between two PROT_NONE pages, flush against the one after them
    (at_start=False) or the one before them (at_start=True). `ptr` is a cffi uint8_t *."""

    def __init__(self, size: int, at_start: bool = False) -> None:
        self.pages = (size + PAGE - 1) // PAGE + 2
        base = _libc.mmap(None, self.pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base is None or base == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.base = base
        for page in (0, self.pages - 1):
            if _libc.mprotect(base + page * PAGE, PAGE, PROT_NONE) != 0:
                _libc.munmap(base, self.pages * PAGE)
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.size = size
        self.ptr = ffi.cast("uint8_t *", base + PAGE if at_start else base + (self.pages - 1) * PAGE - size)

    def put(self, data: bytes, at: int = 0) -> None:
        assert at + len(data) <= self.size
        ffi.memmove(self.ptr + at, data, len(data))

    def get(self, n: int, at: int = 0) -> bytes:
        assert at + n <= self.size
        return bytes(ffi.buffer(self.ptr + at, n))

    def close(self) -> None:
        if self.base:
            _libc.munmap(self.base, self.pages * PAGE)
            self.base = 0

    def __enter__(self) -> "Guarded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
