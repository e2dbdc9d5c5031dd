"""TAI64N timestamps (12 bytes: 2^62 + seconds, big endian; then nanoseconds) for
rejecting replayed handshake initiations: a responder accepts only a timestamp
newer than the last one it accepted from that node."""
from __future__ import annotations

import struct

_BASE = 0x400000000000000A  # 2^62 + 10 (TAI - UTC offset as in WireGuard)


def encode(unix_ns: int) -> bytes:
    return struct.pack(">QI", _BASE + unix_ns // 1_000_000_000, unix_ns % 1_000_000_000)


def decode(raw: bytes) -> int:
    seconds, nanos = struct.unpack(">QI", raw)
    return (seconds - _BASE) * 1_000_000_000 + nanos
