"""Network CA and node certificates (pure: encode, sign, verify with `now` passed in).

A certificate is msgpack {"d": details, "s": Ed25519 signature over details}, where
details is the msgpack map {name, key, groups, not_before, not_after, issuer} and key
is the node's X25519 static public key (the Noise static key). A CA certificate has
the same shape with the CA's Ed25519 verify key, self-signed, and "ca": true.

The fingerprint of a certificate is SHA-256 over the signed details bytes, in hex (the
outer map is not signed and could be re-encoded; the details cannot change without
breaking the signature). Revocation (engine.proto.revocation) names certificates by it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from flatnet.engine.proto.errors import RemoteProtocolError

MAX_CERT_BYTES = 1024


@dataclass(frozen=True)
class Certificate:
    name: str
    key: bytes
    groups: tuple[str, ...]
    not_before: int
    not_after: int
    issuer: str
    is_ca: bool
    raw: bytes
    fingerprint: str = ""  # hex SHA-256 of the signed details (set by decode)

    def check_time(self, now: float) -> None:
        if now < self.not_before:
            raise RemoteProtocolError("bad_cert", f"certificate of {self.name!r} is not valid yet")
        if now > self.not_after:
            raise RemoteProtocolError("bad_cert", f"certificate of {self.name!r} expired")


def _utc(t: int) -> str:
    """A Unix second as UTC text for an error message (the number itself if out of range).
    datetime, not time: this module reads no clock (sans-IO, tests/unit/test_layering.py)."""
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(t)


def check_ca_time(ca: Certificate, now: float) -> None:
    """The CA certificate's own window: outside it, no certificate it signed is valid.
    Checked before the node's window so the error names the real cause (a node's
    not_after is capped at the CA's, so an expired CA mostly means expired nodes too)."""
    if now < ca.not_before:
        raise RemoteProtocolError("bad_cert", f"the CA certificate {ca.name!r} is not valid before {_utc(ca.not_before)}")
    if now > ca.not_after:
        raise RemoteProtocolError("bad_cert", f"the CA certificate {ca.name!r} expired at {_utc(ca.not_after)}")


def check_issued_by(cert: Certificate, ca: Certificate, now: float) -> None:
    """What 3.4 checks after the signature (protocol.md): "issuer" is the CA's name, and
    the CA certificate, then the node's, are valid at `now`. Also run for a certificate
    whose signature was checked before (a cache hit), which may meet another CA
    certificate with the same key, or another time."""
    if cert.issuer != ca.name:
        raise RemoteProtocolError("bad_cert", f"certificate of {cert.name!r}: issuer {cert.issuer!r} is not this CA "
                                              f"({ca.name!r})")
    check_ca_time(ca, now)
    cert.check_time(now)


def _details(name: str, key: bytes, groups: list[str], not_before: int, not_after: int,
             issuer: str, is_ca: bool) -> bytes:
    return msgpack.packb({"name": name, "key": key, "groups": list(groups), "not_before": not_before,
                          "not_after": not_after, "issuer": issuer, "ca": is_ca}, use_bin_type=True)


def create_ca(signing_key: SigningKey, name: str, not_before: int, not_after: int) -> bytes:
    details = _details(name, bytes(signing_key.verify_key), [], not_before, not_after, name, True)
    return msgpack.packb({"d": details, "s": signing_key.sign(details).signature}, use_bin_type=True)


def sign_node(ca_key: SigningKey, ca: Certificate, name: str, public_key: bytes, groups: list[str],
              not_before: int, not_after: int) -> bytes:
    if len(public_key) != 32:
        raise ValueError("a node key is a 32-byte X25519 public key")
    if not name or len(name) > 64:
        raise ValueError("a node name has 1 to 64 characters")
    not_after = min(not_after, ca.not_after)  # a node cannot outlive its CA
    details = _details(name, public_key, groups, not_before, not_after, ca.name, False)
    return msgpack.packb({"d": details, "s": ca_key.sign(details).signature}, use_bin_type=True)


def decode(raw: bytes) -> tuple[Certificate, bytes, bytes]:
    """(certificate, signed details, signature) without checking the signature."""
    if len(raw) > MAX_CERT_BYTES:
        raise RemoteProtocolError("bad_cert", "certificate too large")
    try:
        outer = msgpack.unpackb(raw, raw=False)
        details, signature = outer["d"], outer["s"]
        d = msgpack.unpackb(details, raw=False)
        # exact types before any conversion: this runs before the signature check, on
        # bytes anyone who knows our public key can send (bytes(2**31) would allocate
        # 2 GB, int(inf) raises OverflowError)
        if not (isinstance(d, dict) and type(d.get("name")) is str and type(d.get("key")) is bytes
                and type(d.get("groups")) is list and all(type(g) is str for g in d["groups"])
                and type(d.get("not_before")) is int and type(d.get("not_after")) is int
                and type(d.get("issuer")) is str and type(d.get("ca", False)) is bool):
            raise ValueError
        cert = Certificate(name=d["name"], key=d["key"], groups=tuple(d["groups"]), not_before=d["not_before"],
                           not_after=d["not_after"], issuer=d["issuer"], is_ca=d.get("ca", False), raw=bytes(raw),
                           fingerprint=hashlib.sha256(details).hexdigest())
    except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise RemoteProtocolError("bad_cert", "malformed certificate") from None
    if len(cert.key) != 32 or not isinstance(signature, bytes) or len(signature) != 64:
        raise RemoteProtocolError("bad_cert", "malformed certificate")
    return cert, details, signature


def load_ca(raw: bytes) -> Certificate:
    cert, details, signature = decode(raw)
    if not cert.is_ca:
        raise RemoteProtocolError("bad_cert", f"{cert.name!r} is not a CA certificate")
    try:
        VerifyKey(cert.key).verify(details, signature)
    except BadSignatureError:
        raise RemoteProtocolError("bad_cert", "CA certificate signature is invalid") from None
    return cert


def verify_node(raw: bytes, ca: Certificate, now: float) -> Certificate:
    """The node certificate in raw, if the CA signed it, names it as issuer, and both
    are valid at `now` (protocol.md 3.4)."""
    cert, details, signature = decode(raw)
    if cert.is_ca:
        raise RemoteProtocolError("bad_cert", "a CA certificate cannot identify a node")
    try:
        VerifyKey(ca.key).verify(details, signature)
    except BadSignatureError:
        raise RemoteProtocolError("bad_cert", f"certificate of {cert.name!r} is not signed by CA {ca.name!r}") from None
    # the issuer after the signature: the message for a forged certificate stays "not signed"
    check_issued_by(cert, ca, now)
    return cert
