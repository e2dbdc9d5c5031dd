"""Certificates for tests, made in memory."""
from __future__ import annotations

from nacl.signing import SigningKey

from flatnet.engine.proto import cert as certs
from flatnet.engine.proto.handshake import Identity
from flatnet.engine.proto.noise import generate_keypair

DAY = 86400


class TestCA:
    __test__ = False

    def __init__(self, name: str = "test-ca", now: int = 1_700_000_000) -> None:
        self.key = SigningKey.generate()
        self.now = now
        self.cert = certs.load_ca(certs.create_ca(self.key, name, now - DAY, now + 365 * DAY))

    def identity(self, name: str, groups: list[str] | None = None, not_before: int | None = None,
                 not_after: int | None = None) -> Identity:
        private, public = generate_keypair()
        raw = certs.sign_node(self.key, self.cert, name, public, groups or [],
                              self.now - DAY if not_before is None else not_before,
                              self.now + 30 * DAY if not_after is None else not_after)
        return Identity(private, certs.decode(raw)[0], self.cert)
