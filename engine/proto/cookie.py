"""mac1, mac2 and cookie replies (WireGuard's cookie mechanism; docs/protocol-wire.md).

Every handshake message (types 1 and 2) ends in two 16-byte MACs:

    mac1 = BLAKE2b-128(key = BLAKE2b-256("mac1----" || receiver's static public key),
                       the message up to mac1)
    mac2 = BLAKE2b-128(key = cookie, the message up to mac2), or 16 zero bytes

The receiver's data path (engine/crypto/csrc/cookie.c) drops a message with a wrong
mac1 before Python sees it. Under load it wants mac2 and answers a message without it
with a cookie reply (type 6, COOKIE_REPLY bytes):

    type 6 · version · 0 0 · receiver index u32 LE (the sender index of the message
    answered) · nonce (24) · XChaCha20-Poly1305(key = BLAKE2b-256("cookie--" ||
    the replier's static public key), AD = the answered message's mac1, cookie) (32)

The cookie (16 bytes) depends on the sender's address and a secret the replier
renews every 120 s, so only a sender that receives at its address can use it.
Pure functions: the session keeps the last mac1 it sent and the cookie it got.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from flatnet.engine.proto.constants import TYPE_COOKIE, WIRE_VERSION
from flatnet.engine.proto.errors import RemoteProtocolError

MAC = 16
MACS = 2 * MAC
COOKIE_REPLY = 64
_REPLY_HDR = struct.Struct("<BBHI")


def _key(label: bytes, static_public: bytes) -> bytes:
    return hashlib.blake2b(label + static_public, digest_size=32).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=MAC, key=key).digest()


def add_macs(message: bytes, receiver_static: bytes, cookie: bytes | None) -> tuple[bytes, bytes]:
    """(the message with mac1 and mac2 appended, its mac1)."""
    mac1 = _mac(_key(b"mac1----", receiver_static), message)
    body = message + mac1
    return body + (_mac(cookie, body) if cookie is not None else bytes(MAC)), mac1


def strip_macs(packet: bytes, own_static: bytes) -> bytes:
    """The message without its macs, after checking mac1 (the data path checked it too;
    this keeps the sans-IO code honest on its own)."""
    if len(packet) < MACS:
        raise RemoteProtocolError("bad_mac1", "message shorter than its macs")
    body, mac1 = packet[:-MACS], packet[-MACS:-MAC]
    if not hmac.compare_digest(_mac(_key(b"mac1----", own_static), body), mac1):
        raise RemoteProtocolError("bad_mac1", "mac1 does not match our key")
    return body


def reply_index(packet: bytes) -> int:
    """The receiver index of a cookie reply: which of our handshakes it answers."""
    if len(packet) != COOKIE_REPLY:
        raise RemoteProtocolError("bad_cookie", "cookie reply of wrong size")
    kind, version, reserved, index = _REPLY_HDR.unpack_from(packet)
    if kind != TYPE_COOKIE or version != WIRE_VERSION or reserved:
        raise RemoteProtocolError("bad_cookie", "cookie reply header")
    return index


def open_reply(packet: bytes, replier_static: bytes, mac1: bytes) -> bytes:
    """The cookie in a reply to the message whose mac1 was `mac1`."""
    reply_index(packet)
    nonce, sealed = packet[8:32], packet[32:]
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, mac1, nonce,
                                                                 _key(b"cookie--", replier_static))
    except CryptoError:
        raise RemoteProtocolError("bad_cookie", "cookie reply does not open") from None


def make_reply(message: bytes, replier_static: bytes, cookie: bytes, nonce: bytes) -> bytes:
    """A cookie reply to `message` (with macs) carrying `cookie`: what the data path
    sends; here for tests and for a second implementation to compare against."""
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, message[-MACS:-MAC], nonce,
                                                               _key(b"cookie--", replier_static))
    return _REPLY_HDR.pack(TYPE_COOKIE, WIRE_VERSION, 0, struct.unpack_from("<I", message, 4)[0]) + nonce + sealed
