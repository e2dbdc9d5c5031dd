"""Certificates, key files and the blocklist (docs/protocol.md section 3)."""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

import msgpack

from . import prims

MAX_CERT = 1024
MAX_BLOCKLIST = 65536


class CertError(Exception):
    """The bytes are not a certificate this network accepts (control error bad_cert)."""


@dataclass(frozen=True)
class Cert:
    raw: bytes  # the whole envelope as received
    details: bytes  # the bytes of "d", exactly as they appeared (the signed bytes)
    sig: bytes
    name: str
    key: bytes
    groups: tuple[str, ...]
    not_before: int
    not_after: int
    issuer: str
    ca: bool

    @property
    def fingerprint(self) -> str:
        # SHA-256 of the signed details, not of the outer map (3.6)
        return hashlib.sha256(self.details).hexdigest()


# 3.2: each key of exactly one msgpack type; nothing is converted (bool is not int)
_TYPES: dict[str, type] = {"name": str, "key": bytes, "groups": list, "not_before": int,
                           "not_after": int, "issuer": str}


def _unpack(raw: bytes) -> object:
    # raw=False: str and bin stay distinct (section 1); bounded by the caller's size check
    return msgpack.unpackb(raw, raw=False, strict_map_key=True)


def parse(raw: bytes) -> Cert:
    """Steps 1-3 of 3.4: size, envelope and exact field types. No signature check."""
    if len(raw) > MAX_CERT:
        raise CertError("certificate over 1024 bytes")
    try:
        env = _unpack(raw)
        if not isinstance(env, dict) or not isinstance(env.get("d"), bytes):
            raise CertError("envelope is not {d: bin, s: bin}")
        d = _unpack(env["d"])
    except CertError:
        raise
    except Exception as e:
        raise CertError(f"not msgpack: {e}") from e
    if not isinstance(d, dict):
        raise CertError("details are not a map")
    for k, t in _TYPES.items():
        v = d.get(k)
        if type(v) is not t:
            raise CertError(f"details key {k!r} missing or not {t.__name__}")
    if not all(type(g) is str for g in d["groups"]):
        raise CertError("groups must be str")
    ca = d.get("ca", False)
    if type(ca) is not bool:
        raise CertError("ca must be bool")
    sig = env.get("s")
    if len(d["key"]) != 32 or not isinstance(sig, bytes) or len(sig) != 64:
        raise CertError("key must be 32 bytes and s a 64-byte bin")
    return Cert(raw, env["d"], sig, d["name"], d["key"], tuple(d["groups"]), d["not_before"],
                d["not_after"], d["issuer"], ca)


def load_ca(raw: bytes) -> Cert:
    """A CA certificate (3.3): "ca" true and self-signed with its own "key"."""
    c = parse(raw)
    if not c.ca or not prims.ed25519_verify(c.key, c.details, c.sig):
        raise CertError("not a self-signed CA certificate")
    return c


def verify_node(raw: bytes, ca: Cert, now: float) -> Cert:
    """3.4 steps 1-6 (this peer enforces no blocklist, so step 7 is not reached)."""
    c = parse(raw)
    if c.ca:
        raise CertError("a CA certificate cannot identify a node")
    if not prims.ed25519_verify(ca.key, c.details, c.sig):
        raise CertError("signature does not verify with the CA key")
    if c.issuer != ca.name:
        raise CertError(f"issuer {c.issuer!r} is not this CA ({ca.name!r})")
    if not ca.not_before <= int(now) <= ca.not_after:
        raise CertError("the CA certificate is not valid now")
    if not c.not_before <= int(now) <= c.not_after:
        raise CertError("not valid now")
    return c


def encode(details: dict[str, object], ca_seed: bytes) -> bytes:
    """Sign `details` (in the order given) with the CA's Ed25519 seed: the 3.1 envelope."""
    d = msgpack.packb(details, use_bin_type=True)
    _pub, secret = prims.ed25519_seed_keypair(ca_seed)
    return msgpack.packb({"d": d, "s": prims.ed25519_sign(secret, d)}, use_bin_type=True)


def read_key_text(text: bytes) -> bytes:
    """A key file's bytes: 64 hex characters and a newline; white space stripped, any case."""
    s = text.decode("ascii").strip()
    if len(s) != 64:
        raise CertError("a key file holds 64 hex characters")
    return bytes.fromhex(s)


def key_file_text(key: bytes) -> bytes:
    return key.hex().encode() + b"\n"


def read_key_file(path: str) -> bytes:
    # 3.5: refuse a key file that gives any permission to group or others
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        raise CertError(f"{path}: key file readable by group or others; chmod 600 {path}")
    with open(path, "rb") as f:
        return read_key_text(f.read(200))


@dataclass(frozen=True)
class Blocklist:
    serial: int
    issued_at: int
    names: dict[str, int]
    fingerprints: tuple[bytes, ...]

    def revokes(self, c: Cert) -> bool:
        if bytes.fromhex(c.fingerprint) in self.fingerprints:
            return True
        cutoff = self.names.get(c.name)
        return cutoff is not None and c.not_before <= cutoff


def verify_blocklist(raw: bytes, ca: Cert) -> Blocklist:
    """3.6: size, the CA signature before the body is read, then the body rules."""
    if len(raw) > MAX_BLOCKLIST:
        raise CertError("blocklist over 65536 bytes")
    try:
        env = _unpack(raw)
    except Exception as e:
        raise CertError("blocklist is not msgpack") from e
    if not isinstance(env, dict) or not isinstance(env.get("d"), bytes) or not isinstance(env.get("s"), bytes) \
            or len(env["s"]) != 64 or not prims.ed25519_verify(ca.key, env["d"], env["s"]):
        raise CertError("blocklist signature does not verify")
    d = _unpack(env["d"])
    ok = (isinstance(d, dict) and d.get("t") == "blocklist" and type(d.get("v")) is int and d["v"] == 1
          and d.get("issuer") == ca.name and type(d.get("serial")) is int and 1 <= d["serial"] < 2**63
          and type(d.get("issued_at")) is int and isinstance(d.get("names"), dict)
          and isinstance(d.get("fingerprints"), list)
          and all(type(k) is str and 1 <= len(k) <= 64 and type(v) is int for k, v in d["names"].items())
          and all(isinstance(f, bytes) and len(f) == 32 for f in d["fingerprints"])
          and len(d["names"]) + len(d["fingerprints"]) <= 1000)
    if not ok:
        raise CertError("bad blocklist body")
    return Blocklist(d["serial"], d["issued_at"], dict(d["names"]), tuple(d["fingerprints"]))
