"""Key material left in this process's memory: the tests that check that a freed
session key leaves no copy behind (docs/security.md, "Keys in memory")."""
from __future__ import annotations


def pairs_in_memory(pairs: list[tuple[bytes, bytes]]) -> int:
    """How many times `first` directly followed by `second` lies in this process's
    writable memory, summed over `pairs`. A test holds the two halves apart, so
    Python's own objects never match; a 32-byte key or a ymm register of round keys
    (the same 16 bytes twice) does. Memory is read once for all pairs."""
    hits = 0
    with open("/proc/self/maps") as f:
        maps = [line.split() for line in f.read().splitlines()]
    with open("/proc/self/mem", "rb", 0) as mem:
        for fields in maps:
            if "rw" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, OverflowError):
                continue
            for first, second in pairs:
                at = data.find(first)
                while at >= 0:
                    hits += data[at + len(first):at + len(first) + len(second)] == second
                    at = data.find(first, at + 1)
            del data
    return hits
