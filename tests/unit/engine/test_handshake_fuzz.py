"""Fuzz the handshake payload parsers an unauthenticated sender reaches (issue 13):
anyone who knows a node's public key can send it a Noise message 1 that decrypts, so
the payload map, the certificate inside it and the timestamp are attacker input.
Outcome for any input: a valid result or RemoteProtocolError (a counted drop), never
another exception and never a large allocation."""
import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto import cookie, handshake as hsm, tai64n
from flatnet.engine.proto.constants import PROLOGUE
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.noise import HandshakeIK, generate_keypair, public_key
from tests.harness.pki import TestCA

CA = TestCA()
RESPONDER = CA.identity("host-b")
INITIATOR = CA.identity("host-a")
NOW = CA.now
R_KEY, I_KEY = public_key(RESPONDER.static_private), public_key(INITIATOR.static_private)


def _macs(message: bytes, receiver: bytes) -> bytes:
    """What the session sends: the message with a valid mac1 (anyone who knows the
    receiver's public key can compute it) and no cookie."""
    return cookie.add_macs(message, receiver, None)[0]

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=12), st.binary(max_size=40))
_ANY = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                    max_leaves=12)
_DETAILS = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=70), _SCALAR), "key": st.one_of(st.binary(min_size=32, max_size=32), _ANY,
                                                                      st.integers(0, 2**64 - 1)),
    "groups": st.one_of(st.lists(st.text(max_size=8), max_size=4), _ANY), "not_before": _SCALAR,
    "not_after": _SCALAR, "issuer": _SCALAR, "ca": _SCALAR})
_CERT = st.one_of(
    st.builds(lambda d, s: msgpack.packb({"d": msgpack.packb(d, use_bin_type=True), "s": s}, use_bin_type=True),
              _DETAILS, st.one_of(st.binary(min_size=64, max_size=64), _SCALAR)),
    st.builds(lambda d: msgpack.packb(d, use_bin_type=True), _ANY),
    st.just(INITIATOR.cert.raw), st.binary(max_size=200))
_PAYLOAD = st.one_of(
    st.builds(lambda cert, ts, extra: msgpack.packb({"cert": cert, "ts": ts, **extra}, use_bin_type=True),
              _CERT, st.one_of(st.binary(min_size=12, max_size=12), _SCALAR),
              st.dictionaries(st.text(max_size=5), _SCALAR, max_size=3)),
    st.builds(lambda v: msgpack.packb(v, use_bin_type=True), _ANY),
    st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([("cert",), ("cert", "ts")]))
def test_payload_parser(raw, keys):
    try:
        body = hsm._payload(raw, keys)
    except RemoteProtocolError:
        return
    assert all(isinstance(body[k], bytes) for k in keys)


@settings(max_examples=400, deadline=None)
@given(_PAYLOAD)
def test_an_initiation_with_any_payload_is_taken_or_refused(payload):
    hs = HandshakeIK(True, INITIATOR.static_private, PROLOGUE, remote_static=public_key(RESPONDER.static_private))
    packet = _macs(b"\x01\x02\x00\x00" + (7).to_bytes(4, "little") + hs.write_message_1(payload), R_KEY)
    try:
        init = hsm.consume_initiation(RESPONDER, packet, NOW)
    except RemoteProtocolError:
        return
    assert init.peer.name == "host-a" and init.sender_index == 7


@settings(max_examples=300, deadline=None)
@given(_PAYLOAD)
def test_a_response_with_any_payload_is_taken_or_refused(payload):
    hs, init_packet = hsm.create_initiation(INITIATOR, public_key(RESPONDER.static_private), 7, int(NOW * 1e9))
    init = hsm.consume_initiation(RESPONDER, _macs(init_packet, R_KEY), NOW)
    packet = _macs(b"\x02\x02\x00\x00" + (9).to_bytes(4, "little") + (7).to_bytes(4, "little")
                   + init.hs.write_message_2(payload), I_KEY)
    try:
        peer, _ = hsm.consume_response(INITIATOR, hs, packet, "host-b", NOW)
    except RemoteProtocolError:
        return
    assert peer.name == "host-b"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_raw_handshake_packets_are_refused(packet):
    hs, _ = hsm.create_initiation(INITIATOR, public_key(RESPONDER.static_private), 7, int(NOW * 1e9))
    for consume in (lambda: hsm.consume_initiation(RESPONDER, packet, NOW),
                    lambda: hsm.consume_response(INITIATOR, hs, packet, "host-b", NOW)):
        with pytest.raises(RemoteProtocolError):
            consume()


@pytest.mark.parametrize("field,value", [("key", 2**40), ("key", 2**64 - 1), ("not_before", float("inf"))])
def test_a_certificate_with_huge_numbers_is_refused_without_allocating(field, value):
    """The certificate is decoded before its signature is checked: bytes(key) with an
    integer key allocated that many bytes (2**31: 2 GB, not tried here; 2**40:
    MemoryError), int(inf) raised OverflowError."""
    details = {"name": "x", "key": b"k" * 32, "groups": [], "not_before": 0, "not_after": 2**40, "issuer": "test-ca"}
    details[field] = value
    cert = msgpack.packb({"d": msgpack.packb(details, use_bin_type=True), "s": b"s" * 64}, use_bin_type=True)
    payload = msgpack.packb({"cert": cert, "ts": tai64n.encode(int(NOW * 1e9))}, use_bin_type=True)
    hs = HandshakeIK(True, generate_keypair()[0], PROLOGUE, remote_static=public_key(RESPONDER.static_private))
    with pytest.raises(RemoteProtocolError) as info:
        hsm.consume_initiation(RESPONDER, _macs(b"\x01\x02\x00\x00\x07\x00\x00\x00" + hs.write_message_1(payload), R_KEY),
                               NOW)
    assert info.value.reason == "bad_cert"
