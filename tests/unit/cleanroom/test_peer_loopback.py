"""Two clean-room nodes talk to each other over loopback UDP: the driver's roles, the
cipher choice, the cookie exchange and the transport checks, without an engine."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.cleanroom import certs, noise, prims
from tests.cleanroom.peer import Event, Peer

SEED = bytes(range(32))
NOW = int(time.time())


def _cert(name: str, key: bytes) -> bytes:
    return certs.encode({"name": name, "key": prims.x25519_public(key), "groups": [], "not_before": NOW - 60,
                         "not_after": NOW + 3600, "issuer": "t", "ca": False}, SEED)


CA = certs.load_ca(certs.encode({"name": "t", "key": prims.ed25519_seed_keypair(SEED)[0], "groups": [],
                                 "not_before": NOW - 60, "not_after": NOW + 3600, "issuer": "t", "ca": True}, SEED))


@pytest.fixture
def pair() -> Iterator[tuple[Peer, Peer]]:
    ka, kb = bytes([1] * 32), bytes([2] * 32)
    sa, sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sa.bind(("127.0.0.1", 0))
    sb.bind(("127.0.0.1", 0))
    a, b = Peer(sa, ka, _cert("a", ka), CA), Peer(sb, kb, _cert("b", kb), CA)
    a.add_remote(b.cert, sb.getsockname())
    b.add_remote(a.cert, sa.getsockname())
    yield a, b
    sa.close()
    sb.close()


def _until(kind: str):  # noqa: ANN202
    return lambda e: e.kind == kind


@pytest.mark.parametrize("offer,accepted,cipher", [(None, noise.KNOWN_CIPHERS, prims.CHACHA),
                                                   ([prims.AES, prims.CHACHA], noise.KNOWN_CIPHERS, prims.AES),
                                                   ([prims.AES, prims.CHACHA], (prims.CHACHA,), prims.CHACHA)])
def test_handshake_and_data(pair: tuple[Peer, Peer], offer: list[str] | None, accepted: tuple[str, ...],
                            cipher: str) -> None:
    a, b = pair
    b.accepted = accepted
    a.initiate("b", offer)
    ev = b.poll(_until("responded"), 2)
    assert ev is not None and ev.info["cipher"] == cipher
    assert b.remotes["a"].session is None  # staged until the initiator's first packet (5.9)
    ev = a.poll(_until("established"), 2)
    assert ev is not None and ev.info["cipher"] == cipher
    assert b.poll(_until("keepalive"), 2) is not None and b.remotes["a"].session is not None
    b.send("a", b"x" * 20)
    got = a.poll(_until("data"), 2)
    assert got is not None and got.data == b"x" * 20
    pkt = a.send("b", b"y" * 20)
    assert b.poll(_until("data"), 2) is not None
    a._send(pkt, b.sock.getsockname())
    drop = b.poll(_until("drop"), 2)
    assert drop is not None and drop.info["reason"] == "replay"


def test_cipher_mismatch(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    b.accepted = (prims.CHACHA,)
    a.initiate("b", [prims.AES])
    ev = b.poll(_until("drop"), 2)
    assert ev is not None and ev.info["reason"] == "cipher_mismatch"


def test_cookie_round(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    b.under_load = True
    a.initiate("b")
    assert b.poll(_until("cookie_sent"), 2) is not None
    ev = a.poll(_until("cookie"), 2)
    assert ev is not None and a.remotes["b"].cookie == ev.data
    # the retry (1 s later) carries mac2 keyed by that cookie and is answered
    time.sleep(1.05)
    a.timers()
    assert b.poll(_until("responded"), 3) is not None
    assert a.poll(_until("established"), 2) is not None


def test_replayed_initiation(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    captured: list[bytes] = []
    send = a._send
    a._send = lambda pkt, addr: (captured.append(pkt), send(pkt, addr))[1]  # type: ignore[method-assign]
    a.initiate("b")
    assert b.poll(_until("responded"), 2) is not None
    send(captured[0], b.sock.getsockname())
    ev = b.poll(_until("drop"), 2)
    assert ev is not None and ev.info["reason"] == "replayed_initiation"


def test_garbage_is_a_counted_drop(pair: tuple[Peer, Peer]) -> None:
    a, _b = pair
    for junk in (b"", b"\x01", b"\x01\x02\x00\x00" + bytes(50), b"\x03\x02\x00\x00" + bytes(40), b"\x09\x02\x00\x00",
                 b"\x06\x02\x00\x00" + bytes(60), b"\x02\x02\x00\x00" + bytes(100), b"\x03\x00\x00\x00" + bytes(40)):
        evs: list[Event] = a.handle(junk, ("127.0.0.1", 9))
        assert [e.kind for e in evs] == ["drop"] and evs[0].info["reason"] != "internal", (junk, evs)
