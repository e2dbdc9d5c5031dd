"""Two sessions over a fake wire on a virtual clock."""
import itertools

import pytest

from flatnet.engine.proto import handshake as hsm
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.noise import public_key
from flatnet.engine.proto.session import (HandshakeFailed, KeysExpired, KeysInstalled, PeerSession,
                                  SendKeepalive, State)
from tests.harness.pki import TestCA

WALL0 = 1_700_000_000 * 10**9


class Pair:
    """Sessions a<->b with a virtual clock; the wire delivers handshake datagrams."""

    def __init__(self, ca_b: TestCA | None = None, b_identity=None):
        self.ca = TestCA()
        self.now = 0.0
        self.a_id = self.ca.identity("host-a")
        self.b_id = b_identity or (ca_b or self.ca).identity("host-b")
        counter = itertools.count(1)
        self.released: list[int] = []
        self.a = PeerSession(self.a_id, "host-b", public_key(self.b_id.static_private),
                             lambda: next(counter), self.released.append, self.wall)
        self.b = PeerSession(self.b_id, "host-a", public_key(self.a_id.static_private),
                             lambda: next(counter), self.released.append, self.wall)

    def wall(self) -> int:
        return WALL0 + int(self.now * 1e9)

    def deliver(self, src: PeerSession, dst: PeerSession, dst_id) -> int:
        n = 0
        for packet, _ in src.datagrams_to_send():
            n += 1
            if packet[0] == 1:
                init = hsm.consume_initiation(dst_id, packet, self.wall() / 1e9)
                dst.receive_initiation(init, ("192.0.2.1", 4787), self.now)
            else:
                dst.receive_response(packet, self.now)
        return n

    def exchange(self):
        self.deliver(self.a, self.b, self.b_id)
        self.deliver(self.b, self.a, self.a_id)

    def tick(self, seconds: float, step: float = 0.5):
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for s in (self.a, self.b):
                s.handle_timer(self.now)


def events(session):
    out = []
    while (e := session.next_event()) is not None:
        out.append(e)
    return out


def test_handshake_gives_matching_keys():
    p = Pair()
    p.a.want_keys(p.now)
    assert p.a.state is State.HANDSHAKING
    p.exchange()
    (ea,), (eb,) = events(p.a), events(p.b)
    assert isinstance(ea, KeysInstalled) and isinstance(eb, KeysInstalled)
    assert ea.keys.send == eb.keys.receive and ea.keys.receive == eb.keys.send
    assert ea.keys.remote_index == eb.keys.local_index and eb.keys.remote_index == ea.keys.local_index
    assert p.a.state is State.ESTABLISHED and p.b.state is State.ESTABLISHED


def test_replayed_initiation_is_rejected():
    p = Pair()
    p.a.want_keys(p.now)
    [(packet, _)] = p.a.datagrams_to_send()
    init = hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9)
    p.b.receive_initiation(init, ("192.0.2.1", 1), p.now)
    again = hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9)
    with pytest.raises(RemoteProtocolError) as info:
        p.b.receive_initiation(again, ("192.0.2.1", 1), p.now)
    assert info.value.reason == "replayed_initiation"


def test_certificate_from_another_ca_is_rejected():
    p = Pair(ca_b=TestCA("other-ca"))
    p.a.want_keys(p.now)
    # b (other CA) cannot verify a, a would not verify b: the initiation fails at b
    with pytest.raises(RemoteProtocolError) as info:
        p.deliver(p.a, p.b, p.b_id)
    assert info.value.reason == "bad_cert"


def test_expired_certificate_is_rejected():
    p = Pair()
    a_id = p.ca.identity("host-a", not_before=p.ca.now - 10 * 86400, not_after=p.ca.now - 60)
    session = PeerSession(a_id, "host-b", public_key(p.b_id.static_private), lambda: 7, lambda i: None,
                          p.wall)
    session.want_keys(0.0)
    [(packet, _)] = session.datagrams_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9)
    assert info.value.reason == "bad_cert" and "expired" in str(info.value)


def test_retries_back_off_and_give_up():
    p = Pair()
    p.a.want_keys(p.now)
    sent_at = [p.now]
    p.a.datagrams_to_send()
    while p.now < 100:
        p.now = round(p.now + 0.25, 2)
        p.a.handle_timer(p.now)
        if p.a.datagrams_to_send():
            sent_at.append(p.now)
    gaps = [round(b - a, 2) for a, b in zip(sent_at, sent_at[1:])]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    failed = [e for e in events(p.a) if isinstance(e, HandshakeFailed)]
    assert len(failed) == 1 and p.a.state is State.IDLE and p.a.pending is None


def test_initiator_rekeys_at_120s_and_keys_expire_at_180s():
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a), events(p.b)
    first = p.a.current
    p.tick(119.5)
    assert p.a.pending is None
    p.tick(0.5)
    assert p.a.pending is not None  # the initiator rekeys; the responder waits 10 s more
    assert p.b.pending is None
    p.exchange()
    assert p.a.current is not first and p.a.previous is first
    events(p.a)
    # the old receive key lives on until it is 180 s old
    p.tick(59.5)
    assert p.a.previous is first
    p.tick(0.5)
    assert p.a.previous is None
    expired = [e for e in events(p.a) if isinstance(e, KeysExpired)]
    assert [e.local_indexes for e in expired] == [(first.local_index,)]


def test_unanswered_keys_expire_and_state_returns_to_idle():
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.b)
    # b never talks to a again: b's keys (responder) expire at 180 s unless rekeyed
    for _ in range(400):
        p.now += 0.5
        p.b.handle_timer(p.now)
        p.b.datagrams_to_send()  # b's rekey attempts go nowhere
    assert p.b.current is None
    assert any(isinstance(e, KeysExpired) for e in events(p.b))


def test_keepalive_after_15s_without_sending():
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a)
    p.a.note_traffic(last_tx=2.0, last_rx=2.0)
    p.now = 16.9
    p.a.handle_timer(p.now)
    assert not [e for e in events(p.a) if isinstance(e, SendKeepalive)]
    assert p.a.get_timer() <= 17.0
    p.now = 17.0
    p.a.handle_timer(p.now)
    assert [e for e in events(p.a) if isinstance(e, SendKeepalive)]


def test_a_dead_peer_handshake_is_not_repeated_while_the_peer_is_quiet():
    """The peer answered the handshake but has sent no data yet (it restarted and has
    nothing to say): one handshake, then quiet for another dead-peer timeout, not a
    handshake at every tick (the soak saw 20 a second, the responder's rate limit)."""
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    p.a.note_traffic(last_tx=1.0, last_rx=1.0)
    p.now = 21.5
    p.a.note_traffic(last_tx=21.0, last_rx=1.0)
    p.a.handle_timer(p.now)
    assert p.a.pending is not None  # dead: a new handshake
    p.exchange()
    assert p.a.pending is None and p.a.handshakes == 2
    for t in (22.0, 25.0, 30.0, 40.0):
        p.now = t
        p.a.note_traffic(last_tx=t, last_rx=1.0)  # still sending, still nothing back
        p.a.handle_timer(p.now)
        assert p.a.pending is None, t
    p.now = 41.6  # 20 s after the handshake with nothing heard: try again, once
    p.a.handle_timer(p.now)
    assert p.a.pending is not None


def test_dead_peer_triggers_a_new_handshake():
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    p.a.note_traffic(last_tx=1.0, last_rx=1.0)
    p.now = 10.0
    p.a.note_traffic(last_tx=10.0, last_rx=1.0)  # we keep sending, nothing comes back
    p.a.handle_timer(21.5)
    assert p.a.pending is not None


def test_a_junk_response_under_the_right_index_does_not_kill_the_pending_handshake():
    """issue 13 item 4: anyone who saw the initiation knows the receiver index. A junk
    response under it (here: a valid-looking curve point, garbage after it) is dropped,
    and the real response that follows still completes the handshake."""
    p = Pair()
    p.a.want_keys(p.now)
    [(init, _)] = p.a.datagrams_to_send()
    sender = int.from_bytes(init[4:8], "little")
    from flatnet.engine.proto.noise import generate_keypair
    junk = bytes([2, 0, 0, 0]) + (999).to_bytes(4, "little") + sender.to_bytes(4, "little") + \
        generate_keypair()[1] + b"\x00" * 80
    with pytest.raises(RemoteProtocolError):
        p.a.receive_response(junk, p.now)
    b_init = hsm.consume_initiation(p.b_id, init, p.wall() / 1e9)
    p.b.receive_initiation(b_init, ("192.0.2.1", 4787), p.now)
    [(resp, _)] = p.b.datagrams_to_send()
    p.a.receive_response(resp, p.now)
    assert p.a.state is State.ESTABLISHED
    a_keys = next(e for e in events(p.a) if isinstance(e, KeysInstalled)).keys
    b_keys = next(e for e in events(p.b) if isinstance(e, KeysInstalled)).keys
    assert (a_keys.send, a_keys.receive) == (b_keys.receive, b_keys.send)


def test_a_response_with_a_bad_certificate_leaves_the_handshake_pending():
    """An authenticated response whose certificate is refused (here: the right key, but
    presented after it expired) must not use up the pending handshake either."""
    p = Pair()
    p.a.want_keys(p.now)
    [(init, _)] = p.a.datagrams_to_send()
    b_init = hsm.consume_initiation(p.b_id, init, p.wall() / 1e9)
    p.b.receive_initiation(b_init, ("192.0.2.1", 4787), p.now)
    [(resp, _)] = p.b.datagrams_to_send()
    wall = p.a._wall_ns
    p.a._wall_ns = lambda: 2**62  # far future: b's certificate looks expired
    with pytest.raises(RemoteProtocolError):
        p.a.receive_response(resp, p.now)
    p.a._wall_ns = wall
    p.a.receive_response(resp, p.now)
    assert p.a.state is State.ESTABLISHED


def test_a_rehandshake_that_outlives_its_keys_gives_up_without_an_error():
    # seen on a lighthouse with 10,000 quiet nodes: it re-handshook a silent node, the
    # old keys expired (180 s) while the handshake was pending, and its give-up (90 s)
    # raised LocalProtocolError in the timer, which stopped the lighthouse's tick
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a)
    p.tick(100.0)
    p.a.rehandshake(p.now)   # e.g. the peer stopped answering
    p.a.datagrams_to_send()
    for _ in range(400):     # 100 s: the keys expire at 180 s, the handshake gives up at 190 s
        p.now = round(p.now + 0.25, 2)
        p.a.handle_timer(p.now)
        p.a.datagrams_to_send()
    failed = [e for e in events(p.a) if isinstance(e, HandshakeFailed)]
    assert len(failed) == 1 and p.a.state is State.IDLE and p.a.current is None
