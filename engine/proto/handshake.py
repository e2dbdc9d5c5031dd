"""Handshake messages (types 1 and 2): Noise IK plus certificates and TAI64N.

    initiation: type 1 · version · reserved(2) · sender index u32 LE · IK message 1 · mac1 · mac2
                payload = msgpack {"cert": initiator certificate, "ts": TAI64N,
                                   optional "aead": [transport ciphers offered, preferred first]}
    response:   type 2 · version · reserved(2) · sender index u32 LE · receiver index u32 LE ·
                IK message 2 · mac1 · mac2
                payload = msgpack {"cert": responder certificate,
                                   "aead": the cipher chosen from the offer (only when one was made)}

The transport cipher (docs/protocol.md 5.2, 5.4): without "aead" it is
ChaCha20-Poly1305, as before the key existed, so a peer that ignores unknown keys
interoperates. Noise encrypts and authenticates both payloads: nobody in the middle can
change the offer or the choice. The responder takes the first offered cipher it
supports; the initiator refuses a choice it did not offer.

create_* return the message without its macs (the session adds them: it holds the
cookie, engine/proto/cookie.py); consume_* take it with them and check mac1.

Each side checks the other's certificate against the CA, its validity window, the
blocklist, and that the certified key is the Noise static key. create_* / consume_* pairs, as in
wireguard-go; nothing here keeps state between messages except the HandshakeIK.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import msgpack

from flatnet.engine.proto import cert as certs, cookie, tai64n
from flatnet.engine.proto.constants import (AEAD_CHACHA, AEAD_NAME_MAX, AEAD_OFFER_MAX, PROLOGUE, TYPE_INITIATION,
                                            TYPE_RESPONSE, WIRE_VERSION)
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.noise import HandshakeIK, StaticDH, public_key
from flatnet.engine.proto.revocation import Revocations

_INIT_HDR = struct.Struct("<BBHI")
_RESP_HDR = struct.Struct("<BBHII")
MAX_HANDSHAKE = 1400  # with the macs


def _check_header(kind: int, version: int, reserved: int) -> None:
    """The data path checked these already; the sans-IO code does not rely on it."""
    if version != WIRE_VERSION:
        raise RemoteProtocolError("wrong_version", f"protocol version {version}, we speak {WIRE_VERSION}")
    if reserved:
        raise RemoteProtocolError("reserved_not_zero", f"type {kind}")


class VerifiedCerts:
    """Certificates whose CA signature we checked already, by (CA key, the exact
    certificate bytes): a peer's next handshake (a rekey every 2 minutes) skips the
    decode and the Ed25519 verification. What can change with time is checked on
    every use, never cached: the validity window against `now` and the blocklist
    (Identity.verify_peer). Keyed by the whole bytes, not a digest of them: a hit
    is the same bytes that were verified, byte for byte.

    Bounded (least recently used out first), and at most one certificate per node key
    and CA: the outer map of a certificate is not signed (engine.proto.cert), so one
    valid certificate can be sent as any number of different bytes; without this
    limit one node could push every other node out of the cache. A newer certificate
    of the same key (a renewal) replaces the older one.

    An entry is added, and made the most recently used, only after the handshake that
    carried the certificate was authenticated, found fresh and accepted (PeerSession).
    get() is a look-up only: it runs before the freshness check, so a replayed
    initiation must not change the order. An entry is a pure function of its key, like
    the signature check it saves. Shared between an Identity and its replacements
    (same CA key or not: the key has the CA in it). Not thread-safe: the handshakes
    run on the event loop's thread."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._certs: OrderedDict[tuple[bytes, bytes], certs.Certificate] = OrderedDict()  # (CA key, bytes)
        self._bytes_of: dict[tuple[bytes, bytes], bytes] = {}  # (CA key, node key) -> its bytes in _certs

    def __len__(self) -> int:
        return len(self._certs)

    def get(self, ca: certs.Certificate, raw: bytes) -> certs.Certificate | None:
        return self._certs.get((ca.key, raw))

    def remember(self, ca: certs.Certificate, cert: certs.Certificate) -> None:
        self.forget(ca, cert)  # the key's older certificate (or other bytes of this one)
        self._certs[(ca.key, cert.raw)] = cert
        self._bytes_of[(ca.key, cert.key)] = cert.raw
        while len(self._certs) > self.limit:
            (ca_key, _), old = self._certs.popitem(last=False)
            del self._bytes_of[(ca_key, old.key)]

    def forget(self, ca: certs.Certificate, cert: certs.Certificate) -> None:
        """Whatever certificate of cert's node key is cached (not only these bytes)."""
        raw = self._bytes_of.pop((ca.key, cert.key), None)
        if raw is not None:
            del self._certs[(ca.key, raw)]


@dataclass(frozen=True)
class Identity:
    """This node: its Noise static private key, its certificate, the network CA, the
    network's blocklist (shared, updated in place when a newer one arrives), and the
    transport ciphers it accepts, preferred first (engine.proto.constants AEAD_*; the
    default, ChaCha20-Poly1305 alone, sends no "aead" offer at all).
    Two bounded caches for peers that finished a handshake with us (see
    remember_peer): their verified certificates and the static-static DH."""
    static_private: bytes
    cert: certs.Certificate
    ca: certs.Certificate
    revocations: Revocations | None = None
    aead: tuple[str, ...] = (AEAD_CHACHA,)
    # as a responder, pick by our own order in `aead` (not the offer's): a lighthouse
    # prefers ChaCha20-Poly1305, which needs no OpenSSL context per key (protocol.md 5.10)
    responder_prefers_own: bool = False
    # shared with replacements made by dataclasses.replace (it is keyed by CA)
    verified: VerifiedCerts = field(default_factory=VerifiedCerts, repr=False, compare=False)
    static_public: bytes = field(init=False, repr=False, compare=False)
    static_dh: StaticDH = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once, not per handshake; a replaced Identity (dataclasses.replace)
        # gets its own: the ss values belong to this private key
        object.__setattr__(self, "static_public", public_key(self.static_private))
        object.__setattr__(self, "static_dh", StaticDH(self.static_private))

    def verify_peer(self, raw: bytes, now: float) -> certs.Certificate:
        """Another node's certificate: signed by our CA, valid at `now` (and the CA
        too), not revoked. Only the signature check is skipped for bytes verified before
        (VerifiedCerts); issuer, both time windows and the blocklist are checked every time."""
        peer = self.verified.get(self.ca, raw)
        if peer is None:
            peer = certs.verify_node(raw, self.ca, now)
        else:
            certs.check_issued_by(peer, self.ca, now)
        if self.revocations is not None:
            self.revocations.check(peer)
        return peer

    def remember_peer(self, peer: certs.Certificate, hs: HandshakeIK) -> None:
        """A handshake with `peer` finished: authenticated, fresh, accepted. Its
        certificate (verified in it) and the ss value it used go to the caches."""
        self.verified.remember(self.ca, peer)
        if hs.ss_value is not None and hs.rs == peer.key:
            self.static_dh.remember(peer.key, hs.ss_value)

    def forget_peer(self, peer: certs.Certificate) -> None:
        """The peer was removed (or revoked): out of both caches, whatever certificate
        of its key is cached (it may have sent other bytes than `peer.raw`)."""
        self.verified.forget(self.ca, peer)
        self.static_dh.forget(peer.key)


@dataclass
class Initiation:
    peer: certs.Certificate
    sender_index: int
    timestamp: int
    hs: HandshakeIK
    aead: str = AEAD_CHACHA   # the transport cipher the responder chose
    offered: bool = False     # the initiation had an "aead" offer: the response names the choice


def create_initiation(me: Identity, peer_static: bytes, sender_index: int, unix_ns: int,
                      ephemeral: tuple[bytes, bytes] | None = None) -> tuple[HandshakeIK, bytes]:
    hs = HandshakeIK(True, me.static_private, PROLOGUE, remote_static=peer_static, ephemeral=ephemeral,
                     static_public=me.static_public, static_dh=me.static_dh)
    body: dict = {"cert": me.cert.raw, "ts": tai64n.encode(unix_ns)}
    if _offers(me):
        body["aead"] = list(me.aead)
    payload = msgpack.packb(body, use_bin_type=True)
    return hs, _INIT_HDR.pack(TYPE_INITIATION, WIRE_VERSION, 0, sender_index) + hs.write_message_1(payload)


def _payload(raw: bytes, keys: tuple[str, ...]) -> dict:
    try:
        body = msgpack.unpackb(raw, raw=False)
        if not isinstance(body, dict) or any(not isinstance(body.get(k), bytes) for k in keys):
            raise ValueError
        return body
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise RemoteProtocolError("bad_handshake", "malformed payload") from None


def consume_initiation(me: Identity, packet: bytes, now: float) -> Initiation:
    if len(packet) > MAX_HANDSHAKE or len(packet) < _INIT_HDR.size:
        raise RemoteProtocolError("bad_handshake", "initiation of wrong size")
    kind, version, reserved, sender = _INIT_HDR.unpack_from(packet)
    _check_header(kind, version, reserved)
    message = cookie.strip_macs(packet, me.cert.key)
    hs = HandshakeIK(False, me.static_private, PROLOGUE, static_public=me.static_public, static_dh=me.static_dh)
    body = _payload(hs.read_message_1(message[_INIT_HDR.size:]), ("cert", "ts"))
    peer = me.verify_peer(body["cert"], now)
    if peer.key != hs.rs:
        raise RemoteProtocolError("bad_cert", f"certificate of {peer.name!r} is for another key")
    if len(body["ts"]) != 12:
        raise RemoteProtocolError("bad_handshake", "bad timestamp")
    offered = "aead" in body
    offer = _offer(body["aead"]) if offered else [AEAD_CHACHA]
    # the initiator's order decides, unless this node prefers its own; names this code
    # does not know are skipped
    if me.responder_prefers_own:
        choice = next((name for name in me.aead if name in offer), None)
    else:
        choice = next((name for name in offer if name in me.aead), None)
    if choice is None:
        raise RemoteProtocolError("cipher_mismatch", f"{peer.name!r} offers {offer!r:.300}; "  # bounded by _offer
                                                     f"this node accepts {', '.join(me.aead)}")
    return Initiation(peer, sender, tai64n.decode(body["ts"]), hs, choice, offered)


def _offers(me: Identity) -> bool:
    """Whether this node's initiations carry an "aead" offer: not when it accepts
    ChaCha20-Poly1305 only (then the payload is the one from before the extension)."""
    return me.aead != (AEAD_CHACHA,)


def _offer(raw: object) -> list[str]:
    """An initiation's "aead": a list of 1 to AEAD_OFFER_MAX strings of at most
    AEAD_NAME_MAX bytes (unknown names allowed: a newer peer may offer more)."""
    if (not isinstance(raw, list) or not 1 <= len(raw) <= AEAD_OFFER_MAX
            or any(not isinstance(n, str) or len(n.encode()) > AEAD_NAME_MAX for n in raw)):
        raise RemoteProtocolError("bad_handshake", "malformed aead offer")
    return raw


def create_response(me: Identity, init: Initiation, sender_index: int,
                    ephemeral: tuple[bytes, bytes] | None = None) -> bytes:
    if ephemeral is not None:
        init.hs.e = ephemeral
    body: dict = {"cert": me.cert.raw}
    if init.offered:
        body["aead"] = init.aead
    payload = msgpack.packb(body, use_bin_type=True)
    return (_RESP_HDR.pack(TYPE_RESPONSE, WIRE_VERSION, 0, sender_index, init.sender_index)
            + init.hs.write_message_2(payload))


def response_indexes(packet: bytes) -> tuple[int, int]:
    """(sender index, receiver index) of a response, to find the waiting handshake."""
    if len(packet) < _RESP_HDR.size or len(packet) > MAX_HANDSHAKE:
        raise RemoteProtocolError("bad_handshake", "response of wrong size")
    kind, version, reserved, sender, receiver = _RESP_HDR.unpack_from(packet)
    _check_header(kind, version, reserved)
    return sender, receiver


def consume_response(me: Identity, hs: HandshakeIK, packet: bytes, expected_name: str,
                     now: float) -> tuple[certs.Certificate, str]:
    """The responder's certificate and the transport cipher of the session."""
    message = cookie.strip_macs(packet, me.cert.key)
    body = _payload(hs.read_message_2(message[_RESP_HDR.size:]), ("cert",))
    peer = me.verify_peer(body["cert"], now)
    if peer.key != hs.rs:
        raise RemoteProtocolError("bad_cert", f"certificate of {peer.name!r} is for another key")
    if peer.name != expected_name:
        raise RemoteProtocolError("bad_cert", f"expected {expected_name!r}, got {peer.name!r}")
    # what create_initiation offered: me.aead, or ChaCha20-Poly1305 alone when no offer went
    if "aead" not in body:  # a peer without the extension (or one answering no offer)
        if AEAD_CHACHA not in me.aead:
            raise RemoteProtocolError("cipher_mismatch", f"{peer.name!r} chose {AEAD_CHACHA} (no aead key); "
                                                         f"this node accepts {', '.join(me.aead)}")
        return peer, AEAD_CHACHA
    choice = body["aead"]
    # no offer went: the response must not name a cipher at all (5.4), even ChaCha20-Poly1305
    if not _offers(me) or not isinstance(choice, str) or choice not in me.aead:
        raise RemoteProtocolError("bad_handshake", f"{peer.name!r} chose a cipher not offered: {choice!r:.40}")
    return peer, choice
