"""Key and certificate files: creation with safe permissions, loading with checks."""
from __future__ import annotations

import os
import stat


from flatnet.engine.proto import cert as certs
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.handshake import Identity
from flatnet.engine.proto.revocation import MAX_BYTES as BLOCKLIST_MAX, Revocations


class PkiError(Exception):
    pass


def write_secret(path: str, data: bytes) -> None:
    """Create a private key file readable by root only (0600), never world-readable."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.hex().encode() + b"\n")


def write_public(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def read_secret(path: str) -> bytes:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PkiError(f"{path}: cannot read key: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiError(f"{path}: private key is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                       f"run: chmod 600 {path}")
    with open(path, "rb") as f:
        try:
            key = bytes.fromhex(f.read().decode().strip())
        except ValueError:
            raise PkiError(f"{path}: not a key file (expected 64 hex characters)") from None
    if len(key) != 32:
        raise PkiError(f"{path}: not a key file (expected 64 hex characters)")
    return key


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read {what}: {exc.strerror}") from None


def load_ca(path: str) -> certs.Certificate:
    try:
        return certs.load_ca(read_file(path, "CA certificate"))
    except RemoteProtocolError as exc:
        raise PkiError(f"{path}: {exc}") from None


def load_valid_ca(ca_path: str, now: float) -> certs.Certificate:
    """The CA certificate, refused (PkiError) if it is not valid at `now`: no
    certificate it signed is valid then (docs/decisions.md, CA window). Used at daemon
    start and before signing, with the CA's path and what to do: else the first error
    would name some node's certificate."""
    ca = load_ca(ca_path)
    try:
        certs.check_ca_time(ca, now)
    except RemoteProtocolError as exc:
        hint = ("check this host's clock" if now < ca.not_before else
                "make a new CA and sign every node again (flatnet ca init, flatnet cert sign)")
        raise PkiError(f"{ca_path}: {exc}; no certificate it signed is valid: {hint}") from None
    return ca


def load_identity(ca_path: str, cert_path: str, key_path: str, now: float) -> Identity:
    """This node at daemon start: refused (PkiError, the daemon does not start) if the
    CA certificate or this node's is not valid at `now` (docs/decisions.md, CA window)."""
    from flatnet.engine.proto.noise import public_key
    ca = load_valid_ca(ca_path, now)
    private = read_secret(key_path)
    try:
        cert = certs.verify_node(read_file(cert_path, "certificate"), ca, now)
    except RemoteProtocolError as exc:
        raise PkiError(f"{cert_path}: {exc}") from None
    if cert.key != public_key(private):
        raise PkiError(f"{cert_path}: certificate is for another key than {key_path}")
    return Identity(private, cert, ca)


def load_peer_cert(path: str, ca: certs.Certificate, now: float) -> certs.Certificate:
    try:
        return certs.verify_node(read_file(path, "peer certificate"), ca, now)
    except RemoteProtocolError as exc:
        raise PkiError(f"{path}: {exc}") from None


class BlocklistFile:
    """A blocklist file read again when it changes (size or mtime), polled by the owner's
    timer: an operator's copy or `flatnet cert revoke` takes effect within a tick, with
    no signal. A missing file is no blocklist, not an error."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    def read_if_changed(self) -> bytes | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_size) == self._seen:
            return None
        self._seen = (st.st_mtime_ns, st.st_size)
        try:
            with open(self.path, "rb") as f:
                return f.read(BLOCKLIST_MAX + 1)  # larger than the limit: refused by the parser
        except OSError as exc:
            raise PkiError(f"{self.path}: cannot read blocklist: {exc.strerror}") from None


def save_blocklist(path: str, raw: bytes) -> None:
    """Atomically (a reader never sees half a file): write beside, then rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(raw)
    os.replace(path + ".tmp", path)


def offer_blocklist(revocations: Revocations, raw: bytes, source: str, log, errors) -> bool:  # noqa: ANN001
    """Give a node a blocklist (from a file or a lighthouse): True if it is newer and now
    enforced. A refused one is logged with its reason and counted in `errors`."""
    try:
        newer = revocations.offer(raw)
    except RemoteProtocolError as exc:
        errors[exc.reason] += 1
        log.warning("blocklist_refused", source=source, reason=exc.reason, error=str(exc),
                    keeping=f"serial {revocations.serial}")
        return False
    if newer:
        bl = revocations.current
        log.info("blocklist_applied", source=source, serial=bl.serial, issued_at=bl.issued_at, names=len(bl.names),
                 fingerprints=len(bl.fingerprints))
    return newer
