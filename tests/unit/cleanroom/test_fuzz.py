"""The clean-room parsers take any bytes: a counted drop or a CertError, never a traceback."""
from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cleanroom import certs, noise, prims
from tests.cleanroom.peer import Peer
from tests.unit.cleanroom.test_peer_loopback import CA, _cert

KEY = bytes([7] * 32)
SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never sent on: no remote has an address
PEER = Peer(SOCK, KEY, _cert("fuzz", KEY), CA)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_certificate_parser(raw: bytes) -> None:
    try:
        certs.parse(raw)
    except certs.CertError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 5, 6, 0, 9]), st.binary(max_size=600))
def test_datagrams_are_counted_drops(ptype: int, rest: bytes) -> None:
    pkt = bytes([ptype, noise.VERSION, 0, 0]) + rest
    if ptype in (1, 2) and len(pkt) >= 40:  # let some through the mac1 gate
        pkt = noise.add_macs(pkt[:-32], prims.x25519_public(KEY), None)
    for ev in PEER.handle(pkt, ("127.0.0.1", 9)):
        assert ev.kind == "drop" and ev.info["reason"] != "internal", ev
