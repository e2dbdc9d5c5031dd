"""Packets for data-path tests, built with PyNaCl (an implementation independent of the
C code under test)."""
from __future__ import annotations

import socket
import struct

from nacl import bindings as sodium


def ipv4_udp(src: str, dst: str, payload: bytes, sport: int = 1000, dport: int = 2000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + udp


def seal(key: bytes, receiver_index: int, counter: int, plaintext: bytes, kind: int = 3) -> bytes:
    nonce = b"\0" * 4 + counter.to_bytes(8, "little")
    header = struct.pack("<B3xIQ", kind, receiver_index, counter)
    return header + sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)


def open_packet(key: bytes, packet: bytes) -> tuple[int, int, int, bytes]:
    kind, index, counter = struct.unpack_from("<B3xIQ", packet)
    nonce = b"\0" * 4 + counter.to_bytes(8, "little")
    return kind, index, counter, sodium.crypto_aead_chacha20poly1305_ietf_decrypt(packet[16:], None, nonce, key)
