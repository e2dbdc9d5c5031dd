"""The network's blocklist of revoked certificates (pure: bytes in, decisions out).

Rules:
- A blocklist is msgpack {"d": details, "s": Ed25519 signature over details by the
  network CA}, the same shape as a certificate. details is the msgpack map
      {"t": "blocklist", "v": 1, "issuer": CA name, "serial": int, "issued_at": int,
       "names": {node name: cutoff (int, unix seconds)}, "fingerprints": [32 bytes ...]}
- The signature is checked (with the CA key we already trust) before any field of
  details is read; a blocklist signed by another CA is refused.
- A certificate is revoked when its fingerprint is listed, or when its name is listed
  and its not_before is at or before that name's cutoff. So revoking a name revokes
  every certificate of that name issued so far, and a certificate signed later for the
  same name (re-enrolment, normally with a new key) is valid.
- The fingerprint of a certificate is SHA-256 over its signed details bytes ("d"), in
  hex. Not over the whole file: the outer map is not signed, so it can be re-encoded
  (another msgpack form of the same bytes) without breaking the signature.
- Serials only go up: a blocklist replaces the current one only when its serial is
  larger. The same serial with other content is an error (two blocklists were made
  from different copies): refused, the first one stays.
- Everything is bounded: the file (MAX_BYTES), the number of entries, the name length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from flatnet.engine.proto import cert as certs
from flatnet.engine.proto.errors import RemoteProtocolError

VERSION = 1
MAX_BYTES = 64 * 1024       # the whole signed file
MAX_ENTRIES = 1000          # names + fingerprints
MAX_NAME = 64               # as certificate names (cert.sign_node)
FINGERPRINT_BYTES = 32


@dataclass(frozen=True)
class Blocklist:
    issuer: str
    serial: int
    issued_at: int
    names: dict[str, int] = field(default_factory=dict)   # name -> cutoff (revokes not_before <= cutoff)
    fingerprints: frozenset[str] = frozenset()             # hex SHA-256 of certificate details
    raw: bytes = b""

    def reason(self, cert: certs.Certificate) -> str | None:
        """Why this certificate is revoked, or None."""
        fp = cert.fingerprint
        if fp in self.fingerprints:
            return f"fingerprint {fp[:16]} revoked (blocklist serial {self.serial})"
        cutoff = self.names.get(cert.name)
        if cutoff is not None and cert.not_before <= cutoff:
            return f"name {cert.name!r} revoked for certificates issued up to {cutoff} (blocklist serial {self.serial})"
        return None


def _pack_details(issuer: str, serial: int, issued_at: int, names: dict[str, int], fingerprints: list[str]) -> bytes:
    return msgpack.packb({"t": "blocklist", "v": VERSION, "issuer": issuer, "serial": serial, "issued_at": issued_at,
                          "names": dict(sorted(names.items())),
                          "fingerprints": [bytes.fromhex(f) for f in sorted(fingerprints)]}, use_bin_type=True)


def create(ca_key: SigningKey, ca: certs.Certificate, serial: int, issued_at: int, names: dict[str, int],
           fingerprints: list[str]) -> bytes:
    """A signed blocklist (the CLI's `cert revoke`). Raises ValueError for what load() would refuse."""
    if bytes(ca_key.verify_key) != ca.key:
        raise ValueError("the CA key does not belong to the CA certificate")
    for name in names:
        if not name or len(name) > MAX_NAME:
            raise ValueError(f"a node name has 1 to {MAX_NAME} characters: {name!r}")
    for fp in fingerprints:
        if len(fp) != 2 * FINGERPRINT_BYTES or any(c not in "0123456789abcdef" for c in fp):
            raise ValueError(f"a fingerprint is {2 * FINGERPRINT_BYTES} lowercase hex characters: {fp!r}")
    if len(names) + len(fingerprints) > MAX_ENTRIES:
        raise ValueError(f"a blocklist holds at most {MAX_ENTRIES} entries")
    if not 0 < serial < 1 << 63:
        raise ValueError("the serial is a positive 63-bit integer")
    details = _pack_details(ca.name, serial, issued_at, names, fingerprints)
    raw = msgpack.packb({"d": details, "s": ca_key.sign(details).signature}, use_bin_type=True)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"the blocklist would be {len(raw)} bytes; at most {MAX_BYTES}")
    return raw


def _unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, max_bin_len=MAX_BYTES, max_str_len=MAX_BYTES,
                           max_array_len=MAX_ENTRIES, max_map_len=MAX_ENTRIES)


_UNPACK_ERRORS = (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


def load(raw: bytes, ca: certs.Certificate) -> Blocklist:
    """The blocklist in raw if our CA signed it; RemoteProtocolError("bad_blocklist") otherwise."""
    if not isinstance(raw, bytes) or len(raw) > MAX_BYTES:
        raise RemoteProtocolError("bad_blocklist", f"larger than {MAX_BYTES} bytes")
    try:
        outer = _unpack(raw)
        if not isinstance(outer, dict) or set(outer) != {"d", "s"}:
            raise ValueError
        details, signature = outer["d"], outer["s"]
        if not isinstance(details, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise ValueError
    except _UNPACK_ERRORS:
        raise RemoteProtocolError("bad_blocklist", "not a blocklist file") from None
    try:
        VerifyKey(ca.key).verify(details, signature)
    except BadSignatureError:
        raise RemoteProtocolError("bad_blocklist", f"not signed by this network's CA {ca.name!r}"
                                  f"{_claimed_issuer(details)}") from None
    # signed by our CA from here on: a malformed body is still refused, not trusted
    try:
        d = _unpack(details)
        if not isinstance(d, dict) or d.get("t") != "blocklist" or d.get("v") != VERSION:
            raise ValueError
        issuer, serial, issued_at = d["issuer"], d["serial"], d["issued_at"]
        names, fps = d["names"], d["fingerprints"]
        if not (isinstance(issuer, str) and type(serial) is int and type(issued_at) is int
                and isinstance(names, dict) and isinstance(fps, list) and 0 < serial < 1 << 63):
            raise ValueError
        if len(names) + len(fps) > MAX_ENTRIES:
            raise ValueError
        for name, cutoff in names.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or type(cutoff) is not int:
                raise ValueError
        if any(not isinstance(f, bytes) or len(f) != FINGERPRINT_BYTES for f in fps):
            raise ValueError
    except _UNPACK_ERRORS:
        raise RemoteProtocolError("bad_blocklist", "malformed blocklist body") from None
    if issuer != ca.name:
        raise RemoteProtocolError("bad_blocklist", f"issued by {issuer!r}, expected {ca.name!r}")
    return Blocklist(issuer, serial, issued_at, dict(names), frozenset(f.hex() for f in fps), bytes(raw))


def _claimed_issuer(details: bytes) -> str:
    """For the error message only: the issuer an unverified blocklist names, if it has one."""
    try:
        d = _unpack(details)
        issuer = d.get("issuer") if isinstance(d, dict) else None
    except _UNPACK_ERRORS:
        return ""
    return f" (it says it is from {issuer[:64]!r})" if isinstance(issuer, str) else ""


class Revocations:
    """The blocklist a node enforces now. offer() takes a newer one; reason() answers
    for a certificate. Shared by the handshake checks (Identity.verify_peer) and the
    teardown of existing sessions (Device.apply_revocations)."""

    def __init__(self, ca: certs.Certificate) -> None:
        self.ca = ca
        self.current: Blocklist | None = None

    @property
    def serial(self) -> int:
        return self.current.serial if self.current else 0

    def offer(self, raw: bytes) -> bool:
        """True if raw is a valid blocklist newer than the current one (now current);
        False if it is the current one or older; RemoteProtocolError if invalid or if
        it conflicts with the current one (same serial, other content)."""
        bl = load(raw, self.ca)
        if self.current is not None:
            if bl.serial < self.current.serial or bl.raw == self.current.raw:
                return False
            if bl.serial == self.current.serial:
                raise RemoteProtocolError("blocklist_conflict", f"two different blocklists with serial {bl.serial}")
        self.current = bl
        return True

    def reason(self, cert: certs.Certificate) -> str | None:
        return self.current.reason(cert) if self.current is not None else None

    def check(self, cert: certs.Certificate) -> None:
        why = self.reason(cert)
        if why is not None:
            raise RemoteProtocolError("revoked_cert", f"{cert.name!r}: {why}")


CHUNK = 1024  # bytes of blocklist per control message (lighthouse wire "blocklist")


def chunks(raw: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) pieces of a blocklist for control messages under MAX_MESSAGE."""
    return [(off, raw[off:off + CHUNK]) for off in range(0, len(raw), CHUNK)]


class Reassembly:
    """Pieces of one blocklist from a lighthouse, put back together. Only a serial
    larger than `held` (what we enforce) is collected; a larger serial restarts the
    collection. Memory is bounded by MAX_BYTES. The result is still only bytes: the
    caller verifies it with Revocations.offer (which also checks the serial inside)."""

    def __init__(self) -> None:
        self.serial = 0
        self.total = 0
        self.parts: dict[int, bytes] = {}

    def feed(self, serial: int, total: int, offset: int, data: bytes, held: int) -> bytes | None:
        if not 0 < total <= MAX_BYTES or offset % CHUNK or offset >= total \
                or len(data) != min(CHUNK, total - offset):
            raise RemoteProtocolError("bad_blocklist", "piece outside the announced size")
        if serial <= held or serial < self.serial:
            return None
        if serial != self.serial or total != self.total:
            self.serial, self.total, self.parts = serial, total, {}
        self.parts[offset] = data
        if len(self.parts) * CHUNK < total:
            return None
        raw = b"".join(self.parts[o] for o in sorted(self.parts))
        self.serial, self.total, self.parts = 0, 0, {}
        return raw
