"""Packets for data-path tests, built with PyNaCl (an implementation independent of the
C code under test)."""
from __future__ import annotations

import hashlib
import socket
import struct

from nacl import bindings as sodium


def ones_sum(data: bytes) -> int:
    """RFC 1071 one's complement sum of big-endian 16-bit words, folded (an odd byte is
    padded with zero): 0xFFFF over a header or segment whose checksum is right."""
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_udp(src: str, dst: str, payload: bytes, sport: int = 1000, dport: int = 2000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + udp


WIRE_VERSION = 2  # written out, not imported: a change in the engine must show here


def seal(key: bytes, receiver_index: int, counter: int, plaintext: bytes, kind: int = 3,
         version: int = WIRE_VERSION) -> bytes:
    """A transport packet: the 16-byte header is the associated data."""
    nonce = b"\0" * 4 + counter.to_bytes(8, "little")
    header = struct.pack("<BBHIQ", kind, version, 0, receiver_index, counter)
    return header + sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, header, nonce, key)


def seal_aes(key: bytes, receiver_index: int, counter: int, plaintext: bytes, kind: int = 3) -> bytes:
    """A transport packet of an AES-256-GCM session, sealed by the `cryptography`
    package (independent of the engine's OpenSSL calls): same header, nonce and AD."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = b"\0" * 4 + counter.to_bytes(8, "little")
    header = struct.pack("<BBHIQ", kind, WIRE_VERSION, 0, receiver_index, counter)
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def open_aes(key: bytes, packet: bytes) -> bytes:
    """The plaintext of an AES-256-GCM transport packet (raises on a bad tag)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    counter = struct.unpack_from("<Q", packet, 8)[0]
    return AESGCM(key).decrypt(b"\0" * 4 + counter.to_bytes(8, "little"), packet[16:], packet[:16])


def open_packet(key: bytes, packet: bytes) -> tuple[int, int, int, bytes]:
    kind, version, reserved, index, counter = struct.unpack_from("<BBHIQ", packet)
    assert version == WIRE_VERSION and reserved == 0, packet[:4].hex()
    nonce = b"\0" * 4 + counter.to_bytes(8, "little")
    return kind, index, counter, sodium.crypto_aead_chacha20poly1305_ietf_decrypt(packet[16:], packet[:16], nonce,
                                                                                  key)


def mac1_key(receiver_static: bytes) -> bytes:
    return hashlib.blake2b(b"mac1----" + receiver_static, digest_size=32).digest()


def handshake(kind: int, sender_index: int, body: bytes, receiver_static: bytes, cookie: bytes | None = None,
              version: int = WIRE_VERSION) -> bytes:
    """A handshake-shaped message (type 1 or 2): header, `body`, mac1 for
    `receiver_static`, mac2 keyed by `cookie` (zeros without one). Enough for the data
    path's gate, which does not read the Noise part."""
    msg = struct.pack("<BBHI", kind, version, 0, sender_index) + body
    msg += hashlib.blake2b(msg, digest_size=16, key=mac1_key(receiver_static)).digest()
    return msg + (hashlib.blake2b(msg, digest_size=16, key=cookie).digest() if cookie else bytes(16))


def relayed(relay_id: int, inner: bytes) -> bytes:
    return struct.pack("<BBHI", 5, WIRE_VERSION, 0, relay_id) + inner


BATCH_STRIDE = 65536 + 64  # one slot of the C batch calls: room for the largest datagram


def c_seal_batch(key: bytes, counter0: int, payloads: list[bytes]) -> list[bytes]:
    """The C data path's fn_seal_batch on `payloads` (counters counter0, counter0 + 1,
    ...): the sealed packets, header included. The C module is imported here, not at
    the top: the tests of the device without C use this module too."""
    from flatnet.engine.crypto import ffi, lib

    buf = ffi.new("uint8_t[]", BATCH_STRIDE * len(payloads))
    for i, p in enumerate(payloads):
        ffi.memmove(buf + i * BATCH_STRIDE + 16, p, len(p))
    lens = ffi.new("uint32_t[]", [len(p) for p in payloads])
    assert lib.fn_seal_batch(key, counter0, buf, BATCH_STRIDE, lens, len(payloads), 0) == len(payloads)
    return [bytes(ffi.buffer(buf + i * BATCH_STRIDE, 32 + len(p))) for i, p in enumerate(payloads)]
