"""Framing of the TCP relay (sans-IO): Flatnet datagrams, unchanged, over one TCP
stream, for a host whose network lets no UDP through (docs/protocol-wire.md, "TCP
relay").

    client -> server, once:  b"FNT" + bytes([TCP_VERSION])        (4 bytes)
    then, both ways, frames: length (2 bytes, big-endian, 1..MAX_FRAME) + datagram

The datagram is exactly what would have gone over UDP: handshakes, type-4 control
and type-5 relayed packets, all already encrypted end to end. The framing adds no
cryptography of its own (docs/decisions.md: Noise over the existing sessions, not
TLS). Whoever sends frames is only a new source address to the receiving data path:
nothing is forwarded for it before it has made a Noise handshake and registered over
this very connection.

The decoder is what an attacker reaches first: it holds at most MAX_FRAME + 2 bytes,
refuses a zero or oversized length, and refuses a wrong preamble, each with a
FrameError (the caller closes the connection and counts it).
"""
from __future__ import annotations

import struct

TCP_VERSION = 1
PREAMBLE = b"FNT" + bytes([TCP_VERSION])
MAX_FRAME = 2048   # a datagram: MTU 1420 + headers is below 1500; more is refused
DEFAULT_PORT = 443


class FrameError(ValueError):
    """The peer broke the framing; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def encode(datagram: bytes) -> bytes:
    if not 0 < len(datagram) <= MAX_FRAME:
        raise ValueError(f"a frame holds 1..{MAX_FRAME} bytes, not {len(datagram)}")
    return struct.pack(">H", len(datagram)) + datagram


class Decoder:
    """Bytes in (as they come from the stream), whole datagrams out."""

    def __init__(self, expect_preamble: bool) -> None:
        self._need_preamble = expect_preamble
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        if self._need_preamble:
            if len(self._buf) < len(PREAMBLE):
                if not PREAMBLE.startswith(bytes(self._buf)):
                    raise FrameError("tcp_bad_preamble", "not a Flatnet TCP relay client")
                return out
            if bytes(self._buf[:len(PREAMBLE)]) != PREAMBLE:
                raise FrameError("tcp_bad_preamble", "not a Flatnet TCP relay client (or another version)")
            del self._buf[:len(PREAMBLE)]
            self._need_preamble = False
        # one pass with an offset and one deletion at the end: deleting each frame from
        # the front moved the rest of a 64 KiB read ~45 times
        buf, at, end = self._buf, 0, len(self._buf)
        try:
            while end - at >= 2:
                n = buf[at] << 8 | buf[at + 1]
                if not 0 < n <= MAX_FRAME:
                    raise FrameError("tcp_bad_frame", f"frame length {n} (allowed 1..{MAX_FRAME})")
                if end - at < 2 + n:
                    break
                out.append(bytes(buf[at + 2:at + 2 + n]))
                at += 2 + n
        finally:
            del buf[:at]
        return out

    @property
    def awaiting_preamble(self) -> bool:
        return self._need_preamble

    @property
    def buffered(self) -> int:
        return len(self._buf)
