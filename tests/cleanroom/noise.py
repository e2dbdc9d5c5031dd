"""The handshake of docs/protocol.md section 5: Noise IK, the datagrams of types 1, 2
and 6, mac1/mac2, TAI64N and the "aead" negotiation. Sans-IO: keys and times come in
as arguments."""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass

import msgpack

from . import prims

NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"flatnet/2"
VERSION = 2
T_INIT, T_RESP, T_DATA, T_CTRL, T_RELAY, T_COOKIE = 1, 2, 3, 4, 5, 6
MAX_HANDSHAKE = 1400
COOKIE_LIFETIME = 120.0
KNOWN_CIPHERS = (prims.AES, prims.CHACHA)


class HandshakeError(Exception):
    """A handshake message that must be dropped; `reason` is the page's counter name."""

    def __init__(self, reason: str, msg: str = "") -> None:
        super().__init__(f"{reason}: {msg}" if msg else reason)
        self.reason = reason


def header(ptype: int) -> bytes:
    return bytes((ptype, VERSION, 0, 0))


def check_header(pkt: bytes) -> int:
    """Section 4: the 4 common bytes, in the page's order. Returns the type."""
    if len(pkt) < 4:
        raise HandshakeError("short")
    if pkt[1] != VERSION:
        raise HandshakeError("wrong_version")
    if pkt[2] or pkt[3]:
        raise HandshakeError("reserved_not_zero")
    if not 1 <= pkt[0] <= 6:
        raise HandshakeError("unknown_type")
    return pkt[0]


def tai64n(unix_ns: int) -> bytes:
    # 5.3: 2^62 + 10 + seconds (u64 BE) || nanoseconds (u32 BE)
    s, ns = divmod(unix_ns, 10**9)
    return struct.pack(">QI", 2**62 + 10 + s, ns)


class Symmetric:
    """Noise's SymmetricState with its CipherState, HASH = BLAKE2b (HASHLEN 64)."""

    def __init__(self) -> None:
        self.h = NAME.ljust(64, b"\0")  # the name is shorter than HASHLEN: zero padded
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = prims.blake2b(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = hkdf(self.ck, ikm)
        self.k, self.n = temp[:32], 0

    def encrypt_and_hash(self, p: bytes) -> bytes:
        c = p if self.k is None else prims.aead_seal(prims.CHACHA, self.k, self.n, self.h, p)
        if self.k is not None:
            self.n += 1
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, c: bytes) -> bytes:
        p = c if self.k is None else prims.aead_open(prims.CHACHA, self.k, self.n, self.h, c)
        if self.k is not None:
            self.n += 1
        self.mix_hash(c)
        return p

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, b"")
        return k1[:32], k2[:32]


def hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = prims.hmac_blake2b(ck, ikm)
    o1 = prims.hmac_blake2b(temp, b"\x01")
    return o1, prims.hmac_blake2b(temp, o1 + b"\x02")


class Handshake:
    """One IK handshake, from one side. The initiator must know `remote_static` (5.1)."""

    def __init__(self, initiator: bool, static_private: bytes, remote_static: bytes | None = None) -> None:
        self.initiator = initiator
        self.s = static_private
        self.s_pub = prims.x25519_public(static_private)
        self.rs = remote_static
        self.e = b""
        self.re = b""
        self.sym = Symmetric()
        self.sym.mix_hash(PROLOGUE)
        # pre-message "<- s": the responder's static key
        self.sym.mix_hash(remote_static if initiator else self.s_pub)  # type: ignore[arg-type]

    # -> e, es, s, ss
    def write_message1(self, payload: bytes, ephemeral_private: bytes) -> bytes:
        assert self.initiator and self.rs is not None
        sym = self.sym
        self.e = ephemeral_private
        e_pub = prims.x25519_public(self.e)
        sym.mix_hash(e_pub)
        sym.mix_key(prims.x25519(self.e, self.rs))
        enc_s = sym.encrypt_and_hash(self.s_pub)
        sym.mix_key(prims.x25519(self.s, self.rs))
        return e_pub + enc_s + sym.encrypt_and_hash(payload)

    def read_message1(self, msg: bytes) -> bytes:
        assert not self.initiator
        if len(msg) < 96:  # e 32, s 48, payload tag 16 (5.7 step 3)
            raise HandshakeError("bad_handshake", "Noise message 1 too short")
        sym = self.sym
        try:
            self.re = msg[:32]
            sym.mix_hash(self.re)
            sym.mix_key(prims.x25519(self.s, self.re))
            self.rs = sym.decrypt_and_hash(msg[32:80])
            sym.mix_key(prims.x25519(self.s, self.rs))
            return sym.decrypt_and_hash(msg[80:])
        except prims.CryptoError as e:
            raise HandshakeError("bad_handshake", str(e)) from e

    # <- e, ee, se
    def write_message2(self, payload: bytes, ephemeral_private: bytes) -> bytes:
        assert not self.initiator and self.rs is not None
        sym = self.sym
        self.e = ephemeral_private
        e_pub = prims.x25519_public(self.e)
        sym.mix_hash(e_pub)
        sym.mix_key(prims.x25519(self.e, self.re))
        sym.mix_key(prims.x25519(self.e, self.rs))
        return e_pub + sym.encrypt_and_hash(payload)

    def read_message2(self, msg: bytes) -> bytes:
        assert self.initiator and self.rs is not None
        if len(msg) < 48:
            raise HandshakeError("bad_handshake", "Noise message 2 too short")
        sym = self.sym
        try:
            self.re = msg[:32]
            sym.mix_hash(self.re)
            sym.mix_key(prims.x25519(self.e, self.re))
            sym.mix_key(prims.x25519(self.s, self.re))
            return sym.decrypt_and_hash(msg[32:])
        except prims.CryptoError as e:
            raise HandshakeError("bad_handshake", str(e)) from e

    def copy(self) -> Handshake:
        # 5.8 step 6: a response is read into a copy, so a junk one changes nothing
        return copy.deepcopy(self)

    def keys(self) -> tuple[bytes, bytes]:
        """(send key, receive key) for this side (5.1 Split)."""
        k1, k2 = self.sym.split()
        return (k1, k2) if self.initiator else (k2, k1)


# --- mac1, mac2 and the cookie reply (5.5) ---

def mac1_key(receiver_static: bytes) -> bytes:
    return prims.blake2b(b"mac1----" + receiver_static, 32)


def cookie_key(replier_static: bytes) -> bytes:
    return prims.blake2b(b"cookie--" + replier_static, 32)


def add_macs(msg: bytes, receiver_static: bytes, cookie: bytes | None) -> bytes:
    """Append mac1 and mac2 to a type-1/2 message (header and Noise part)."""
    m = msg + prims.blake2b(msg, 16, mac1_key(receiver_static))
    return m + (prims.blake2b(m, 16, cookie) if cookie else bytes(16))


def mac1_ok(pkt: bytes, own_static: bytes) -> bool:
    return len(pkt) >= 40 and prims.blake2b(pkt[:-32], 16, mac1_key(own_static)) == pkt[-32:-16]


def mac2_ok(pkt: bytes, cookie: bytes) -> bool:
    return prims.blake2b(pkt[:-16], 16, cookie) == pkt[-16:]


def cookie_reply(receiver_index: int, nonce: bytes, replier_static: bytes, answered_mac1: bytes,
                 cookie: bytes) -> bytes:
    return (header(T_COOKIE) + struct.pack("<I", receiver_index) + nonce
            + prims.xchacha_seal(cookie_key(replier_static), nonce, answered_mac1, cookie))


def open_cookie_reply(pkt: bytes, replier_static: bytes, sent_mac1: bytes) -> tuple[int, bytes]:
    """(receiver index, cookie) of a type-6 reply, opened with the mac1 we last sent."""
    if check_header(pkt) != T_COOKIE or len(pkt) != 64:
        raise HandshakeError("bad_cookie", "not a 64-byte type 6")
    idx = struct.unpack_from("<I", pkt, 4)[0]
    try:
        return idx, prims.xchacha_open(cookie_key(replier_static), pkt[8:32], sent_mac1, pkt[32:])
    except prims.CryptoError as e:
        raise HandshakeError("bad_cookie", str(e)) from e


# --- the datagrams (5.2, 5.4) ---

def initiation(sender_index: int, noise_msg: bytes, responder_static: bytes, cookie: bytes | None) -> bytes:
    return add_macs(header(T_INIT) + struct.pack("<I", sender_index) + noise_msg, responder_static, cookie)


def response(sender_index: int, receiver_index: int, noise_msg: bytes, initiator_static: bytes,
             cookie: bytes | None) -> bytes:
    return add_macs(header(T_RESP) + struct.pack("<II", sender_index, receiver_index) + noise_msg,
                    initiator_static, cookie)


def split_initiation(pkt: bytes, own_static: bytes) -> tuple[int, bytes]:
    """(sender index, Noise message 1) of a type-1 datagram, after header, size and mac1."""
    if check_header(pkt) != T_INIT or not 8 <= len(pkt) <= MAX_HANDSHAKE:
        raise HandshakeError("bad_handshake", "not a type 1 of 8 to 1400 bytes")
    if not mac1_ok(pkt, own_static):
        raise HandshakeError("bad_mac1")
    return struct.unpack_from("<I", pkt, 4)[0], pkt[8:-32]


def split_response(pkt: bytes, own_static: bytes) -> tuple[int, int, bytes]:
    """(sender index, receiver index, Noise message 2) of a type-2 datagram."""
    if check_header(pkt) != T_RESP or not 12 <= len(pkt) <= MAX_HANDSHAKE:
        raise HandshakeError("bad_handshake", "not a type 2 of 12 to 1400 bytes")
    if not mac1_ok(pkt, own_static):
        raise HandshakeError("bad_mac1")
    s, r = struct.unpack_from("<II", pkt, 4)
    return s, r, pkt[12:-32]


# --- payloads and the cipher choice (5.2, 5.4, 5.10) ---

def initiation_payload(cert: bytes, ts: bytes, offer: list[str] | None = None) -> bytes:
    p: dict[str, object] = {"cert": cert, "ts": ts}
    if offer is not None:
        p["aead"] = offer
    return msgpack.packb(p, use_bin_type=True)


def response_payload(cert: bytes, chosen: str | None = None) -> bytes:
    p: dict[str, object] = {"cert": cert}
    if chosen is not None:
        p["aead"] = chosen
    return msgpack.packb(p, use_bin_type=True)


@dataclass(frozen=True)
class InitPayload:
    cert: bytes
    ts: bytes
    offer: list[str] | None  # None: the "aead" key was absent


def parse_initiation_payload(p: bytes) -> InitPayload:
    try:
        m = msgpack.unpackb(p, raw=False)
    except Exception as e:
        raise HandshakeError("bad_handshake", "payload is not msgpack") from e
    if not isinstance(m, dict) or not isinstance(m.get("cert"), bytes) or not isinstance(m.get("ts"), bytes):
        raise HandshakeError("bad_handshake", "payload needs cert and ts as bin")
    offer = m.get("aead")
    if offer is not None and not (isinstance(offer, list) and 1 <= len(offer) <= 8 and all(
            isinstance(x, str) and len(x.encode()) <= 32 for x in offer)):
        raise HandshakeError("bad_handshake", "aead must be 1 to 8 str")
    return InitPayload(m["cert"], m["ts"], offer)


def parse_response_payload(p: bytes) -> tuple[bytes, str | None]:
    try:
        m = msgpack.unpackb(p, raw=False)
    except Exception as e:
        raise HandshakeError("bad_handshake", "payload is not msgpack") from e
    if not isinstance(m, dict) or not isinstance(m.get("cert"), bytes):
        raise HandshakeError("bad_handshake", "payload needs cert as bin")
    chosen = m.get("aead")
    if chosen is not None and not isinstance(chosen, str):
        raise HandshakeError("bad_handshake", "aead must be str")
    return m["cert"], chosen


def choose_cipher(offer: list[str] | None, accepted: tuple[str, ...] = KNOWN_CIPHERS) -> str:
    """The responder's rule: the first offered name it accepts; no offer means ChaCha."""
    for name in offer if offer is not None else [prims.CHACHA]:
        if name in accepted:
            return name
    raise HandshakeError("cipher_mismatch")


def cipher_of_response(offer: list[str] | None, chosen: str | None) -> str:
    """The initiator's rule (5.8 step 10a)."""
    if chosen is not None:
        if offer is None or chosen not in offer:
            raise HandshakeError("bad_handshake", f"response chose {chosen!r}, which was not offered")
        return chosen
    if offer is not None and prims.CHACHA not in offer:
        raise HandshakeError("cipher_mismatch")
    return prims.CHACHA
