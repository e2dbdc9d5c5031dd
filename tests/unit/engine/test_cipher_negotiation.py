"""The transport cipher negotiated in the handshake payloads (docs/protocol.md 5.2 and
5.4): "aead" offered by the initiator, the responder's choice named in the response."""
import dataclasses
import itertools

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.config import ConfigError, check_aes_impl, transport_ciphers
from flatnet.engine.proto import cookie, handshake as hsm, tai64n
from flatnet.engine.proto.constants import AEAD_AES, AEAD_CHACHA, PROLOGUE
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.noise import HandshakeIK
from flatnet.engine.proto.session import KeysInstalled, PeerSession, State
from tests.harness.pki import TestCA

CA = TestCA()
A, B = CA.identity("host-a"), CA.identity("host-b")
NOW = CA.now
AUTO, CHACHA_ONLY, AES_ONLY = (AEAD_AES, AEAD_CHACHA), (AEAD_CHACHA,), (AEAD_AES,)


def ident(base: hsm.Identity, aead: tuple[str, ...]) -> hsm.Identity:
    return dataclasses.replace(base, aead=aead)


def _macs(message: bytes, receiver: hsm.Identity) -> bytes:
    return cookie.add_macs(message, receiver.cert.key, None)[0]


def negotiate(a_aead, b_aead) -> tuple[str, str, bool, int]:
    """One handshake host-a -> host-b: a's cipher, b's cipher, whether an offer was
    made, and the initiation's length."""
    a, b = ident(A, a_aead), ident(B, b_aead)
    hs, packet = hsm.create_initiation(a, b.cert.key, 7, NOW * 10**9)
    init = hsm.consume_initiation(b, _macs(packet, b), NOW)
    response = _macs(hsm.create_response(b, init, 9), a)
    cert, cipher = hsm.consume_response(a, hs, response, "host-b", NOW)
    assert cert.name == "host-b"
    return cipher, init.aead, init.offered, len(packet)


@pytest.mark.parametrize("a_aead, b_aead, expected", [
    (AUTO, AUTO, AEAD_AES),                 # both have AES-NI: AES-256-GCM
    (AUTO, CHACHA_ONLY, AEAD_CHACHA),       # the responder has no AES
    (CHACHA_ONLY, AUTO, AEAD_CHACHA),       # an initiator that offers nothing (old-style payload)
    (AES_ONLY, AUTO, AEAD_AES),
    ((AEAD_CHACHA, AEAD_AES), AUTO, AEAD_CHACHA),  # the initiator's order decides
])
def test_negotiation_matrix(a_aead, b_aead, expected):
    a_cipher, b_cipher, offered, size = negotiate(a_aead, b_aead)
    assert a_cipher == b_cipher == expected
    assert offered is (a_aead != CHACHA_ONLY)
    if not offered:  # the same initiation as before the extension (the default identity)
        assert size == len(hsm.create_initiation(A, B.cert.key, 7, NOW * 10**9)[1])


def test_the_response_names_the_choice_only_when_offered():
    for a_aead, present in ((CHACHA_ONLY, False), (AUTO, True)):
        a, b = ident(A, a_aead), ident(B, AUTO)
        hs, packet = hsm.create_initiation(a, b.cert.key, 7, NOW * 10**9)
        init = hsm.consume_initiation(b, _macs(packet, b), NOW)
        response = _macs(hsm.create_response(b, init, 9), a)
        payload = msgpack.unpackb(_response_payload(a, hs, response), raw=False)
        assert ("aead" in payload) is present


def _response_payload(a: hsm.Identity, hs: HandshakeIK, response: bytes) -> bytes:
    import copy
    return copy.copy(hs).read_message_2(cookie.strip_macs(response, a.cert.key)[12:])


def _response_with(payload: dict, a: hsm.Identity, b: hsm.Identity) -> tuple[HandshakeIK, bytes]:
    """A response from host-b whose payload is `payload` (host-b's certificate added)."""
    hs, packet = hsm.create_initiation(a, b.cert.key, 7, NOW * 10**9)
    init = hsm.consume_initiation(ident(b, AUTO), _macs(packet, b), NOW)  # it takes any offer of ours
    body = msgpack.packb({"cert": b.cert.raw, **payload}, use_bin_type=True)
    message = b"\x02\x02\x00\x00" + (9).to_bytes(4, "little") + (7).to_bytes(4, "little") + init.hs.write_message_2(body)
    return hs, _macs(message, a)


def test_a_peer_without_the_extension_gives_chacha():
    """A version-2 responder that ignores "aead" answers without the key: ChaCha20-Poly1305."""
    hs, response = _response_with({}, ident(A, AUTO), B)
    assert hsm.consume_response(ident(A, AUTO), hs, response, "host-b", NOW)[1] == AEAD_CHACHA


@pytest.mark.parametrize("a_aead, choice", [
    (CHACHA_ONLY, AEAD_AES),      # no offer made, yet AES chosen
    (CHACHA_ONLY, AEAD_CHACHA),   # no offer made: the response must not name a cipher (5.4, 5.10)
    (AUTO, "rot13"),              # never offered
    (AES_ONLY, AEAD_CHACHA),      # ChaCha is not implied when it was not offered
    (AUTO, [AEAD_AES]),           # not a string
    (AUTO, None),
])
def test_a_response_choosing_what_was_not_offered_is_refused(a_aead, choice):
    a = ident(A, a_aead)
    hs, response = _response_with({"aead": choice}, a, B)
    with pytest.raises(RemoteProtocolError) as err:
        hsm.consume_response(a, hs, response, "host-b", NOW)
    assert err.value.reason == "bad_handshake"


def test_a_session_refuses_the_unoffered_choice_and_keeps_no_keys():
    a = ident(A, CHACHA_ONLY)
    counter = itertools.count(1)
    session = PeerSession(a, "host-b", B.cert.key, lambda: next(counter), lambda i: None, lambda: NOW * 10**9)
    session.want_keys(0.0)
    (packet, _), = session.datagrams_to_send()
    init = hsm.consume_initiation(B, packet, NOW)
    body = msgpack.packb({"cert": B.cert.raw, "aead": AEAD_AES}, use_bin_type=True)
    message = (b"\x02\x02\x00\x00" + (99).to_bytes(4, "little") + init.sender_index.to_bytes(4, "little")
               + init.hs.write_message_2(body))
    with pytest.raises(RemoteProtocolError) as err:
        session.receive_response(_macs(message, a), 0.1)
    assert err.value.reason == "bad_handshake"
    assert session.current is None and session.state is State.HANDSHAKING and session.pending is not None
    assert not any(isinstance(e, KeysInstalled) for e in iter(session.next_event, None))


def test_forced_aes_refuses_a_peer_that_cannot():
    # as responder: an initiator offering ChaCha only (or nothing) gets no response
    for offer in (CHACHA_ONLY, ()):
        a = ident(A, offer or CHACHA_ONLY)
        _, packet = hsm.create_initiation(a, B.cert.key, 7, NOW * 10**9)
        with pytest.raises(RemoteProtocolError) as err:
            hsm.consume_initiation(ident(B, AES_ONLY), _macs(packet, B), NOW)
        assert err.value.reason == "cipher_mismatch"
    # as initiator: a peer without the extension answers without a choice (ChaCha)
    a = ident(A, AES_ONLY)
    hs, response = _response_with({}, a, B)
    with pytest.raises(RemoteProtocolError) as err:
        hsm.consume_response(a, hs, response, "host-b", NOW)
    assert err.value.reason == "cipher_mismatch"


def _initiation_with(extra: dict) -> bytes:
    hs = HandshakeIK(True, A.static_private, PROLOGUE, remote_static=B.cert.key)
    body = msgpack.packb({"cert": A.cert.raw, "ts": tai64n.encode(NOW * 10**9), **extra}, use_bin_type=True)
    return _macs(b"\x01\x02\x00\x00" + (7).to_bytes(4, "little") + hs.write_message_1(body), B)


@pytest.mark.parametrize("offer", ["aes-256-gcm", [], [AEAD_AES] * 9, ["x" * 33], [AEAD_AES, 3], {"a": 1},
                                   [b"aes-256-gcm"]])
def test_a_malformed_offer_is_refused(offer):
    with pytest.raises(RemoteProtocolError) as err:
        hsm.consume_initiation(ident(B, AUTO), _initiation_with({"aead": offer}), NOW)
    assert err.value.reason == "bad_handshake"


def test_unknown_names_in_an_offer_are_skipped():
    init = hsm.consume_initiation(ident(B, AUTO), _initiation_with({"aead": ["x-future-cipher", AEAD_AES]}), NOW)
    assert init.aead == AEAD_AES and init.offered
    init = hsm.consume_initiation(ident(B, CHACHA_ONLY), _initiation_with({"aead": ["x" * 32, AEAD_CHACHA]}), NOW)
    assert init.aead == AEAD_CHACHA


def test_keys_carry_the_cipher_both_ways():
    counter = itertools.count(1)
    a, b = ident(A, AUTO), ident(B, AUTO)
    sa = PeerSession(a, "host-b", b.cert.key, lambda: next(counter), lambda i: None, lambda: NOW * 10**9)
    sb = PeerSession(b, "host-a", a.cert.key, lambda: next(counter), lambda i: None, lambda: NOW * 10**9)
    sa.want_keys(0.0)
    (packet, _), = sa.datagrams_to_send()
    sb.receive_initiation(hsm.consume_initiation(b, packet, NOW), ("192.0.2.1", 4787), 0.0)
    (response, _), = sb.datagrams_to_send()
    sa.receive_response(response, 0.0)
    assert sa.current.cipher == sb.current.cipher == AEAD_AES


def test_config_setting_to_offer():
    assert transport_ciphers("auto", True) == ((AEAD_AES, AEAD_CHACHA), None)
    aead, why = transport_ciphers("auto", False)
    assert aead == (AEAD_CHACHA,) and "AES-NI" in why
    assert transport_ciphers(AEAD_CHACHA, True) == ((AEAD_CHACHA,), None)
    assert transport_ciphers(AEAD_AES, True) == ((AEAD_AES,), None)
    with pytest.raises(ConfigError, match="cannot offer it"):
        transport_ciphers(AEAD_AES, False)


_NAMES = st.one_of(st.sampled_from([AEAD_AES, AEAD_CHACHA, "", "x" * 32, "x" * 33]), st.text(max_size=40))
_AEAD = st.one_of(st.lists(_NAMES, max_size=10), _NAMES, st.none(), st.integers(-2**63, 2**63 - 1), st.binary(max_size=40),
                  st.dictionaries(st.text(max_size=4), st.integers(-2**63, 2**63 - 1), max_size=3),
                  st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.binary(max_size=8), st.lists(st.text(max_size=4))),
                           max_size=3))


@settings(max_examples=300, deadline=None)
@given(_AEAD, st.sampled_from([AUTO, CHACHA_ONLY, AES_ONLY]))
def test_an_initiation_with_any_aead_is_answered_with_an_offered_cipher_or_refused(offer, accepts):
    try:
        init = hsm.consume_initiation(ident(B, accepts), _initiation_with({"aead": offer}), NOW)
    except RemoteProtocolError as exc:
        assert exc.reason in ("bad_handshake", "cipher_mismatch")
        return
    assert isinstance(offer, list) and init.aead in offer and init.aead in accepts and init.offered


@settings(max_examples=200, deadline=None)
@given(_AEAD, st.sampled_from([AUTO, CHACHA_ONLY, AES_ONLY]))
def test_a_response_with_any_aead_gives_an_offered_cipher_or_is_refused(choice, offers):
    a = ident(A, offers)
    hs, response = _response_with({"aead": choice}, a, B)
    try:
        _, cipher = hsm.consume_response(a, hs, response, "host-b", NOW)
    except RemoteProtocolError as exc:
        assert exc.reason == "bad_handshake"
        return
    assert cipher == choice and cipher in offers and offers != CHACHA_ONLY  # no offer, no "aead" (5.4)


def test_a_handshake_given_up_after_a_cipher_refusal_says_so():
    """A node with [tun] cipher = "aes-256-gcm" and a peer that answers without "aead"
    (ChaCha20-Poly1305 only, or an older engine): the answer comes, authenticated, and
    is refused. The give-up must name that, not "no answer" (which sends the operator
    to the firewall, docs/troubleshooting.md)."""
    from flatnet.engine.proto.constants import HANDSHAKE_GIVE_UP
    from flatnet.engine.proto.session import HandshakeFailed
    a = ident(A, AES_ONLY)
    counter = itertools.count(1)
    session = PeerSession(a, "host-b", B.cert.key, lambda: next(counter), lambda i: None, lambda: NOW * 10**9)
    session.want_keys(0.0)
    (packet, _), = session.datagrams_to_send()
    init = hsm.consume_initiation(ident(B, AUTO), packet, NOW)
    body = msgpack.packb({"cert": B.cert.raw}, use_bin_type=True)  # as a peer without the extension answers
    message = (b"\x02\x02\x00\x00" + (99).to_bytes(4, "little") + init.sender_index.to_bytes(4, "little")
               + init.hs.write_message_2(body))
    with pytest.raises(RemoteProtocolError) as err:
        session.receive_response(_macs(message, a), 0.1)
    assert err.value.reason == "cipher_mismatch"
    t = 0.1
    while session.pending is not None and t < HANDSHAKE_GIVE_UP + 60:  # the retries, then the give-up
        t = max(t, session.get_timer() or t)
        session.handle_timer(t)
    failed = [e for e in iter(session.next_event, None) if isinstance(e, HandshakeFailed)]
    assert len(failed) == 1 and session.current is None
    assert "cipher_mismatch" in failed[0].reason and AEAD_CHACHA in failed[0].reason, failed[0].reason
    assert failed[0].reason.startswith("no usable answer from host-b")


@pytest.mark.parametrize("a_aead, expected", [
    (AUTO, AEAD_CHACHA),          # an engine's default offer: the lighthouse takes ChaCha20-Poly1305
    (AES_ONLY, AEAD_AES),         # a node forced to AES-256-GCM is still served
    (CHACHA_ONLY, AEAD_CHACHA),
])
def test_a_lighthouse_prefers_its_own_order(a_aead, expected):
    """A lighthouse (responder_prefers_own) picks ChaCha20-Poly1305 whenever offered: no
    OpenSSL context per key for control traffic (docs/protocol.md 5.10, docs/lighthouse.md)."""
    a = ident(A, a_aead)
    b = dataclasses.replace(B, aead=(AEAD_CHACHA, AEAD_AES), responder_prefers_own=True)
    hs, packet = hsm.create_initiation(a, b.cert.key, 7, NOW * 10**9)
    init = hsm.consume_initiation(b, _macs(packet, b), NOW)
    cert, cipher = hsm.consume_response(a, hs, _macs(hsm.create_response(b, init, 9), a), "host-b", NOW)
    assert cipher == init.aead == expected


@settings(max_examples=200, deadline=None)
@given(_AEAD, st.sampled_from([AUTO, CHACHA_ONLY, AES_ONLY, (AEAD_CHACHA, AEAD_AES)]))
def test_a_responder_preferring_its_own_order_answers_any_aead_with_an_offered_cipher_or_refuses(offer, accepts):
    """The lighthouse's branch (responder_prefers_own) on any "aead" an initiator can
    send: an offered name it accepts (its own first choice), or a counted refusal."""
    me = dataclasses.replace(B, aead=accepts, responder_prefers_own=True)
    try:
        init = hsm.consume_initiation(me, _initiation_with({"aead": offer}), NOW)
    except RemoteProtocolError as exc:
        assert exc.reason in ("bad_handshake", "cipher_mismatch")
        return
    assert init.offered and init.aead in offer
    assert init.aead == next(name for name in accepts if name in offer)


@pytest.mark.parametrize("value", ["opnessl", "vaes", "off", "0"])
def test_an_unknown_flatnet_aes_impl_stops_the_engine_with_a_message(value):
    """A typo is not taken for a choice: the C side keeps OpenSSL's code (above), and the
    engine refuses to start and says what it expected."""
    with pytest.raises(ConfigError, match=r"FLATNET_AES_IMPL=.* expected \"auto\" \(the default\) or \"openssl\""):
        check_aes_impl(value)


@pytest.mark.parametrize("value", [None, "", "auto", "AUTO", "openssl", "OpenSSL"])
def test_the_flatnet_aes_impl_choices_pass(value):
    check_aes_impl(value)
