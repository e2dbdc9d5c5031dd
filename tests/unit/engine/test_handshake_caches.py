"""The handshake caches (engine.proto.handshake.VerifiedCerts, engine.proto.noise.StaticDH):
filled only by a handshake that was authenticated, fresh and accepted; a warm cache
still refuses a revoked or expired certificate; bounded; dropped with the peer; a
cached value gives the same keys as the computation it replaces."""
import dataclasses

import msgpack
import pytest

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.proto import cert as certs, handshake as hsm, noise
from flatnet.engine.proto.errors import LocalProtocolError, RemoteProtocolError
from flatnet.engine.proto.session import KeysInstalled
from tests.harness.pki import DAY, TestCA
from tests.unit.engine.test_revocation import NOW, blocklist, pair
from tests.unit.engine.test_session import Pair, events


class Counting:
    """Counts calls of a module function (monkeypatched), then calls it."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)


def rekey(p: Pair) -> tuple:
    """a starts a new handshake with b; both KeysInstalled events."""
    p.now += 1
    p.a.rehandshake(p.now)
    p.exchange()
    (ea,), (eb,) = events(p.a), events(p.b)
    return ea, eb


def test_the_caches_fill_only_when_the_handshake_was_accepted():
    p = Pair()
    p.a.want_keys(p.now)
    [(packet, _)] = p.a.datagrams_to_send()
    init = hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9)  # authenticated, not yet accepted
    assert len(p.b_id.verified) == 0 and len(p.b_id.static_dh) == 0
    p.b.receive_initiation(init, ("192.0.2.1", 1), p.now)
    assert p.b_id.verified.get(p.ca.cert, p.a_id.cert.raw) == p.a_id.cert
    assert p.b_id.static_dh.get(p.a_id.cert.key) == noise.dh(p.b_id.static_private, p.a_id.cert.key)
    # a replay of the same initiation (refused as not fresh) adds nothing to emptied caches
    p.b_id.forget_peer(p.a_id.cert)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        p.b.receive_initiation(hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9), ("192.0.2.1", 1), p.now)
    assert len(p.b_id.verified) == 0 and len(p.b_id.static_dh) == 0
    # the initiator's caches fill when the response is accepted
    assert len(p.a_id.verified) == 0
    p.deliver(p.b, p.a, p.a_id)
    assert p.a_id.verified.get(p.ca.cert, p.b_id.cert.raw) == p.b_id.cert
    assert p.a_id.static_dh.get(p.b_id.cert.key) is not None


def test_junk_and_bad_certificates_add_nothing():
    p = Pair()
    p.a.want_keys(p.now)
    [(packet, _)] = p.a.datagrams_to_send()
    tampered = bytearray(packet)
    tampered[100] ^= 1  # inside the encrypted static key or payload: fails authentication
    with pytest.raises(RemoteProtocolError):
        hsm.consume_initiation(p.b_id, bytes(tampered), p.wall() / 1e9)
    other = TestCA("other-ca").identity("host-a")  # authenticates, but another CA signed it
    with pytest.raises(RemoteProtocolError, match="not signed"):
        hs, msg = hsm.create_initiation(other, p.b_id.cert.key, 1, p.wall())
        hsm.consume_initiation(p.b_id, hsm.cookie.add_macs(msg, p.b_id.cert.key, None)[0], p.wall() / 1e9)
    assert len(p.b_id.verified) == 0 and len(p.b_id.static_dh) == 0


def test_a_rekey_with_warm_caches_skips_ed25519_and_one_x25519_per_side_and_gives_the_same_keys(monkeypatch):
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a), events(p.b)
    verify = Counting(monkeypatch, certs, "verify_node")
    dh = Counting(monkeypatch, noise, "dh")
    ea, eb = rekey(p)
    assert isinstance(ea, KeysInstalled) and isinstance(eb, KeysInstalled)
    assert ea.keys.send == eb.keys.receive and ea.keys.receive == eb.keys.send
    assert verify.calls == 0  # both certificates came from the caches
    assert dh.calls == 6      # es, ee, se at each side (ss cached); 8 without the caches
    # and without the caches, the very same handshake code agrees with them
    p.a_id.forget_peer(p.b_id.cert)
    p.b_id.forget_peer(p.a_id.cert)
    ea, eb = rekey(p)
    assert ea.keys.send == eb.keys.receive and verify.calls == 2 and dh.calls == 14


def test_a_warm_cache_still_refuses_a_revoked_certificate():
    """The blocklist is checked on every handshake, also when the certificate's
    signature check came from the cache (the peer not torn down yet: no
    apply_revocations, so nothing was forgotten)."""
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    assert a.me.verified.get(ca.cert, b.me.cert.raw) is not None  # warm
    assert a.me.revocations.offer(blocklist(ca, 2, fps=[b.me.cert.fingerprint]))
    b.rehandshake(b.peers["host-a"], 2.0)
    a.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.2", 4787))], 2.1)
    assert a.errors["revoked_cert"] == 1 and not wire  # refused: no response


def test_a_warm_cache_still_refuses_an_expired_certificate():
    p = Pair()
    a_id = p.a_id = p.ca.identity("host-a", not_before=p.ca.now - DAY, not_after=p.ca.now + 100)
    p.a = type(p.a)(a_id, "host-b", p.b_id.cert.key, lambda: 1, lambda i: None, p.wall)
    p.b = type(p.b)(p.b_id, "host-a", a_id.cert.key, lambda: 2, lambda i: None, p.wall)
    p.a.want_keys(p.now)
    p.exchange()
    assert p.b_id.verified.get(p.ca.cert, a_id.cert.raw) is not None  # warm
    p.now = 200.0  # wall time: 100 s past the certificate's end
    p.a.rehandshake(p.now)
    [(packet, _)] = p.a.datagrams_to_send()
    with pytest.raises(RemoteProtocolError, match="expired"):
        hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9)


def test_the_verified_cache_is_per_ca_key():
    """An Identity of another network sharing the cache object gets no hit."""
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    other = TestCA("test-ca")  # same name, another key
    theirs = dataclasses.replace(other.identity("host-x"), verified=p.b_id.verified)
    with pytest.raises(RemoteProtocolError, match="not signed"):
        theirs.verify_peer(p.a_id.cert.raw, NOW)


def test_the_caches_are_bounded_least_recently_used_out_first():
    ca = TestCA()
    ids = [ca.identity(f"n{i}") for i in range(3)]
    vc = hsm.VerifiedCerts(limit=2)
    sd = noise.StaticDH(ids[0].static_private, limit=2)
    for i in ids:
        vc.remember(ca.cert, i.cert)
        sd.remember(i.cert.key, b"v" * 32)
    assert len(vc) == 2 and vc.get(ca.cert, ids[0].cert.raw) is None
    assert len(sd) == 2 and sd.get(ids[0].cert.key) is None
    vc.remember(ca.cert, ids[1].cert)  # a handshake of n1 accepted again: now the newest
    vc.remember(ca.cert, ids[0].cert)
    assert vc.get(ca.cert, ids[1].cert.raw) is not None and vc.get(ca.cert, ids[2].cert.raw) is None


def test_the_caches_drop_a_removed_peer():
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    key = b.me.cert.key
    assert a.me.static_dh.get(key) is not None
    a.remove_peer("host-b")
    assert a.me.static_dh.get(key) is None and a.me.verified.get(ca.cert, b.me.cert.raw) is None


def test_a_static_dh_cache_of_another_key_is_refused():
    ca = TestCA()
    mine, other = ca.identity("a"), ca.identity("b")
    with pytest.raises(LocalProtocolError, match="another static key"):
        noise.HandshakeIK(False, mine.static_private, b"p", static_dh=other.static_dh)


def forged_initiation(responder: hsm.Identity, claimed: hsm.Identity, wall_ns: int) -> bytes:
    """An initiation that names `claimed`'s static key without its private key: it
    passes mac1 (anyone who knows the responder's public key computes it) and reaches
    the ss look-up, then fails authentication."""
    attacker = dataclasses.replace(claimed, static_private=noise.generate_keypair()[0])
    object.__setattr__(attacker, "static_public", claimed.cert.key)  # the key it claims
    _, message = hsm.create_initiation(attacker, responder.cert.key, 1, wall_ns)
    return hsm.cookie.add_macs(message, responder.cert.key, None)[0]


def test_an_unauthenticated_initiation_does_not_reorder_the_static_dh_cache():
    """Attack: the responder looks up the ss value of the key an initiation names
    before the initiation is authenticated. Before the fix the look-up made the entry
    the most recently used, so anyone (no certificate needed) could choose which
    peers' entries survive and which go first: a state change before authentication."""
    p = Pair()
    victim, other, newcomer = (p.ca.identity(n) for n in ("host-v", "host-o", "host-n"))
    p.b_id.static_dh.limit = 2
    for peer in (victim, other):  # victim: the least recently used
        p.b_id.static_dh.remember(peer.cert.key, noise.dh(p.b_id.static_private, peer.cert.key))
    with pytest.raises(RemoteProtocolError):
        hsm.consume_initiation(p.b_id, forged_initiation(p.b_id, victim, p.wall()), p.wall() / 1e9)
    p.b_id.static_dh.remember(newcomer.cert.key, noise.dh(p.b_id.static_private, newcomer.cert.key))
    assert p.b_id.static_dh.get(victim.cert.key) is None  # still the least recently used: out
    assert p.b_id.static_dh.get(other.cert.key) is not None


def test_a_replayed_initiation_does_not_reorder_the_certificate_cache():
    """A replay authenticates (Noise) and its certificate is looked up before the
    TAI64N check refuses it: the look-up must leave the order as it was."""
    p = Pair()
    p.a.want_keys(p.now)
    [(packet, _)] = p.a.datagrams_to_send()
    p.b.receive_initiation(hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9), ("192.0.2.1", 1), p.now)
    other, newcomer = p.ca.identity("host-o"), p.ca.identity("host-n")
    p.b_id.verified.limit = 2
    p.b_id.verified.remember(p.ca.cert, other.cert)  # host-a's entry: now the least recently used
    with pytest.raises(RemoteProtocolError, match="replayed"):
        p.b.receive_initiation(hsm.consume_initiation(p.b_id, packet, p.wall() / 1e9), ("192.0.2.1", 1), p.now)
    p.b_id.verified.remember(p.ca.cert, newcomer.cert)
    assert p.b_id.verified.get(p.ca.cert, p.a_id.cert.raw) is None
    assert p.b_id.verified.get(p.ca.cert, other.cert.raw) is not None


def reencoded(cert: certs.Certificate, pad: int) -> certs.Certificate:
    """The same signed certificate as other bytes: the outer map is not signed, so an
    extra key (or another msgpack form) still verifies (engine.proto.cert)."""
    _, details, signature = certs.decode(cert.raw)
    return certs.decode(msgpack.packb({"d": details, "s": signature, "pad": pad}, use_bin_type=True))[0]


def test_one_certificate_sent_as_many_encodings_cannot_push_other_nodes_out():
    """Attack: a node with one valid certificate rekeys with b again and again, each
    time sending its certificate as other bytes. Each is accepted (it is signed), and
    before the fix each added an entry, so 16,384 rekeys emptied the cache of every
    other node's certificate (and filled it with up to 1 KB entries). Now the cache
    keeps one certificate per node key: the newest."""
    p = Pair()
    victim = p.ca.identity("host-v")
    p.b_id.verified.limit = 3
    p.b_id.verified.remember(p.ca.cert, victim.cert)
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a), events(p.b)
    for pad in range(4):
        p.a.me = dataclasses.replace(p.a_id, cert=reencoded(p.a_id.cert, pad))
        ea, eb = rekey(p)
        assert isinstance(eb, KeysInstalled) and eb.peer_cert.raw == p.a.me.cert.raw  # accepted
    assert p.b_id.verified.get(p.ca.cert, victim.cert.raw) == victim.cert
    assert len(p.b_id.verified) == 2
    assert p.b_id.verified.get(p.ca.cert, p.a.me.cert.raw) is not None  # the last one sent
    # forgetting the peer drops whatever bytes of its key are cached, not only the ones named
    p.b_id.forget_peer(p.a_id.cert)
    assert len(p.b_id.verified) == 1


def test_a_renewed_certificate_replaces_the_older_one_and_its_groups_apply():
    """The groups a handshake gives are those of the certificate presented in it, never
    those of another cached certificate of the same key; the renewal takes the older
    one's place in the cache, and the older one (still valid) is checked afresh."""
    p = Pair()
    p.a.want_keys(p.now)
    p.exchange()
    events(p.a), events(p.b)
    old = p.a_id.cert
    raw = certs.sign_node(p.ca.key, p.ca.cert, "host-a", old.key, ["web"], p.ca.now - 10, p.ca.now + DAY)
    renewed = dataclasses.replace(p.a_id, cert=certs.decode(raw)[0])
    p.a.me = renewed
    ea, eb = rekey(p)
    assert eb.peer_cert.groups == ("web",) and len(p.b_id.verified) == 1
    assert p.b_id.verified.get(p.ca.cert, old.raw) is None
    p.a.me = p.a_id  # back to the older certificate: its own groups, not the cached renewal's
    ea, eb = rekey(p)
    assert eb.peer_cert.groups == () and eb.peer_cert.raw == old.raw


def test_a_revoked_pinned_peer_leaves_both_caches():
    """A pinned peer (a lighthouse the engine holds) is not removed when revoked, only
    its keys go: its cache entries go too, as for any revoked peer."""
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    a.pinned = {"host-b"}
    key = b.me.cert.key
    assert a.me.static_dh.get(key) is not None and a.me.verified.get(ca.cert, b.me.cert.raw) is not None
    assert a.me.revocations.offer(blocklist(ca, 2, {"host-b": NOW - 60}))
    assert a.apply_revocations(1.0) == ["host-b"]
    assert a.me.static_dh.get(key) is None and a.me.verified.get(ca.cert, b.me.cert.raw) is None
