"""Transport packets, types 3 and 4 (docs/protocol.md section 6). Sans-IO."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import prims
from .noise import T_CTRL, T_DATA, HandshakeError, check_header, header

MAX_COUNTER = 2**60
WINDOW = 4032  # the engine's window (6.4); the page asks for at least 2048


class TransportError(HandshakeError):
    """A transport packet that must be dropped; `reason` is the page's drop counter."""


class ReplayWindow:
    """6.4: counter c is new if c < 2^60 and (c > top, or top - c <= WINDOW and unseen)."""

    def __init__(self) -> None:
        self.top = 0
        self.bits = 0  # bit i set: counter top - i was accepted

    def fresh(self, c: int) -> bool:
        if c >= MAX_COUNTER:
            return False
        if c > self.top:
            return True
        d = self.top - c
        return d <= WINDOW and not (self.bits >> d) & 1

    def mark(self, c: int) -> None:
        # only after authentication (6.3 step 6)
        if c > self.top:
            self.bits = (self.bits << (c - self.top)) & ((1 << (WINDOW + 1)) - 1)
            self.top = c
        self.bits |= 1 << (self.top - c)


@dataclass
class Session:
    """One direction pair of keys after Split(): our receive index, the peer's index."""

    local_index: int  # the index we chose: it arrives in the peer's packets
    remote_index: int  # the index the peer chose: we write it in ours
    send_key: bytes
    recv_key: bytes
    cipher: str = prims.CHACHA
    send_counter: int = 0
    window: ReplayWindow = field(default_factory=ReplayWindow)

    def seal(self, ptype: int, plaintext: bytes) -> bytes:
        if self.send_counter >= MAX_COUNTER:
            raise TransportError("key_exhausted")
        hdr = header(ptype) + struct.pack("<IQ", self.remote_index, self.send_counter)
        self.send_counter += 1
        # the whole 16-byte header is the associated data (6.1)
        return hdr + prims.aead_seal(self.cipher, self.send_key, self.send_counter - 1, hdr, plaintext)

    def open(self, pkt: bytes) -> tuple[int, int, bytes]:
        """(type, counter, plaintext) in the order of 6.3; raises with the drop reason."""
        ptype = check_header(pkt)
        if ptype not in (T_DATA, T_CTRL):
            raise TransportError("unknown_type")
        if len(pkt) < 32:
            raise TransportError("short")
        idx, ctr = struct.unpack_from("<IQ", pkt, 4)
        if idx != self.local_index:
            raise TransportError("unknown_index")
        if not self.window.fresh(ctr):
            raise TransportError("replay")
        try:
            pt = prims.aead_open(self.cipher, self.recv_key, ctr, pkt[:16], pkt[16:])
        except prims.CryptoError as e:
            raise TransportError("auth_failed") from e
        self.window.mark(ctr)
        return ptype, ctr, pt
