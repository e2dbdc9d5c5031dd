"""The blocklist (engine.proto.revocation): signed by the network CA, checked before use,
serials only go up, names revoke what was issued up to a cutoff, fingerprints revoke one
certificate; its parser and the piece reassembly are bounded and fuzzed."""
import ipaddress
import itertools

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from flatnet.engine.proto import cert as certs, revocation as rv
from flatnet.engine.proto.errors import RemoteProtocolError
from flatnet.engine.proto.handshake import Identity
from tests.harness.pki import DAY, TestCA

NOW = TestCA().now


def blocklist(ca, serial=1, names=None, fps=()):
    return rv.create(ca.key, ca.cert, serial, NOW, names or {}, list(fps))


SHARED = TestCA()  # for the fuzz tests: one CA, one valid blocklist to mutate
SAMPLE = blocklist(SHARED, 9, {"host-b": NOW}, ["ab" * 32])


def test_sign_and_verify_round_trip():
    ca = TestCA()
    host = ca.identity("host-b")
    bl = rv.load(blocklist(ca, 7, {"host-x": NOW}, [host.cert.fingerprint]), ca.cert)
    assert (bl.serial, bl.issuer, bl.names) == (7, ca.cert.name, {"host-x": NOW})
    assert bl.fingerprints == {host.cert.fingerprint}


def test_a_blocklist_signed_by_another_ca_is_refused_with_a_clear_error():
    ours, theirs = TestCA("ours"), TestCA("theirs")
    with pytest.raises(RemoteProtocolError, match="not signed by this network's CA 'ours'.*'theirs'") as exc:
        rv.load(blocklist(theirs), ours.cert)
    assert exc.value.reason == "bad_blocklist"
    # same name, other key: still refused (the key decides, not the name)
    with pytest.raises(RemoteProtocolError, match="not signed"):
        rv.load(blocklist(TestCA("ours")), ours.cert)


def test_a_tampered_body_is_refused_before_anything_in_it_is_used():
    ca = TestCA()
    outer = msgpack.unpackb(blocklist(ca, 5, {"host-b": NOW}))
    body = msgpack.unpackb(outer["d"])
    body["names"] = {}  # an attacker removes a revoked name
    outer["d"] = msgpack.packb(body, use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="not signed"):
        rv.load(msgpack.packb(outer, use_bin_type=True), ca.cert)


def test_serials_only_go_up():
    ca = TestCA()
    rev = rv.Revocations(ca.cert)
    assert rev.serial == 0
    assert rev.offer(blocklist(ca, 10, {"host-b": NOW})) is True
    assert rev.offer(blocklist(ca, 9)) is False          # an old one cannot replace it
    assert rev.current.serial == 10 and "host-b" in rev.current.names
    assert rev.offer(rev.current.raw) is False           # the same again: nothing to do
    with pytest.raises(RemoteProtocolError) as exc:      # same serial, other content
        rev.offer(blocklist(ca, 10, {"host-c": NOW}))
    assert exc.value.reason == "blocklist_conflict" and rev.current.names == {"host-b": NOW}
    assert rev.offer(blocklist(ca, 11)) is True and rev.current.names == {}


def test_a_name_revokes_certificates_issued_up_to_its_cutoff_so_re_enrolment_works():
    ca = TestCA()
    old = ca.identity("host-b", not_before=NOW - 100).cert
    rev = rv.Revocations(ca.cert)
    rev.offer(blocklist(ca, 1, {"host-b": NOW - 60}))
    assert "revoked" in rev.reason(old)
    with pytest.raises(RemoteProtocolError) as exc:
        rev.check(old)
    assert exc.value.reason == "revoked_cert"
    at_cutoff = ca.identity("host-b", not_before=NOW - 60).cert
    assert rev.reason(at_cutoff) is not None             # not_before == cutoff: revoked
    new = ca.identity("host-b", not_before=NOW - 59).cert  # signed after the revocation
    assert rev.reason(new) is None
    assert rev.reason(ca.identity("host-c", not_before=NOW - 100).cert) is None


def test_a_fingerprint_revokes_exactly_one_certificate():
    ca = TestCA()
    me = ca.identity("host-b")
    renewed = certs.decode(certs.sign_node(ca.key, ca.cert, "host-b", me.cert.key, [], NOW - 10, NOW + DAY))[0]
    rev = rv.Revocations(ca.cert)
    rev.offer(blocklist(ca, 1, fps=[me.cert.fingerprint]))
    assert "fingerprint" in rev.reason(me.cert)
    assert rev.reason(renewed) is None


def test_the_fingerprint_survives_re_encoding_the_unsigned_outer_map():
    """The outer {"d", "s"} map is not signed: an attacker re-encodes it (bin 8 as bin 32,
    keys swapped) and the signature still holds. The fingerprint must not change."""
    ca = TestCA()
    raw = ca.identity("host-b").cert.raw
    outer = msgpack.unpackb(raw)
    d, s = outer["d"], outer["s"]
    bin32 = lambda b: b"\xc6" + len(b).to_bytes(4, "big") + b  # noqa: E731
    reencoded = b"\x82" + b"\xa1s" + bin32(s) + b"\xa1d" + bin32(d)
    assert reencoded != raw
    again = certs.verify_node(reencoded, ca.cert, NOW)
    assert again.fingerprint == certs.decode(raw)[0].fingerprint


def test_limits_are_enforced_when_creating_and_loading():
    ca = TestCA()
    with pytest.raises(ValueError, match="entries"):
        rv.create(ca.key, ca.cert, 1, NOW, {f"n{i}": 0 for i in range(rv.MAX_ENTRIES + 1)}, [])
    with pytest.raises(ValueError, match="hex"):
        rv.create(ca.key, ca.cert, 1, NOW, {}, ["zz"])
    with pytest.raises(ValueError, match="CA key"):
        rv.create(TestCA().key, ca.cert, 1, NOW, {}, [])
    with pytest.raises(RemoteProtocolError, match="larger"):
        rv.load(b"\x00" * (rv.MAX_BYTES + 1), ca.cert)


def test_the_largest_blocklist_fits_the_limit_and_travels_in_pieces():
    ca = TestCA()
    raw = rv.create(ca.key, ca.cert, 3, NOW, {"n" * 60 + f"{i:04d}": NOW for i in range(500)},
                    [f"{i:064x}" for i in range(500)])
    assert len(raw) <= rv.MAX_BYTES
    r = rv.Reassembly()
    pieces = rv.chunks(raw)
    assert len(pieces) > 1 and all(len(p) <= rv.CHUNK for _, p in pieces)
    got = [r.feed(3, len(raw), off, data, held=0) for off, data in reversed(pieces)]  # any order
    assert got[:-1] == [None] * (len(pieces) - 1) and got[-1] == raw
    assert rv.load(got[-1], ca.cert).serial == 3


def test_reassembly_ignores_what_we_hold_and_restarts_on_a_newer_serial():
    r = rv.Reassembly()
    assert r.feed(5, 2000, 0, b"a" * 1024, held=5) is None and r.parts == {}   # not newer than held
    assert r.feed(6, 2000, 0, b"a" * 1024, held=5) is None
    assert r.feed(7, 1500, 0, b"b" * 1024, held=5) is None                    # newer: starts over
    assert r.feed(6, 2000, 1024, b"a" * 976, held=5) is None                  # older piece: ignored
    assert r.feed(7, 1500, 1024, b"b" * 476, held=5) == b"b" * 1500
    for bad in [(7, 0, 0, b""), (7, rv.MAX_BYTES + 1, 0, b"x"), (7, 100, 0, b"x" * 99), (7, 2000, 1000, b"x"),
                (7, 2000, 2048, b"x")]:
        with pytest.raises(RemoteProtocolError):
            r.feed(*bad, held=0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_arbitrary_bytes_are_refused_cleanly(data):
    with pytest.raises(RemoteProtocolError):
        rv.load(data, SHARED.cert)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=8), st.integers(0, 700))
def test_fuzz_mutated_blocklists_are_refused_or_identical(flips, cut):
    raw = bytearray(SAMPLE)
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    data = bytes(raw[:cut] if cut < len(raw) else raw)
    try:
        bl = rv.load(data, SHARED.cert)
    except RemoteProtocolError:
        return
    assert bl.names == {"host-b": NOW} and bl.serial == 9  # only an unchanged signed body loads


@settings(max_examples=300, deadline=None)
@given(st.integers(-2, 1 << 64), st.integers(-2, 1 << 17), st.integers(-2, 1 << 17), st.binary(max_size=1100))
def test_fuzz_reassembly_never_raises_anything_else(serial, total, offset, data):
    r = rv.Reassembly()
    try:
        out = r.feed(serial, total, offset, data, held=0)
    except RemoteProtocolError:
        return
    assert out is None or len(out) == total <= rv.MAX_BYTES


# ---- the handshake and the live teardown (Device, data path faked)

class RecordingDataPath:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name,) + args)

    def seal_control(self, slot, payload):
        return None

    def stats(self, slot):
        from flatnet.engine.datapath_port import PeerStats
        return PeerStats(0, 0, 0, 0, 0, None, None, 0, False)


def pair(ca):
    """Two devices (host-a, host-b) with a session between them over a fake wire."""
    wire = []
    quiet = Logger("t", stream=open("/dev/null", "w"))
    devs = {}
    clock = itertools.count(NOW * 10**9, 10**6)  # wall time moves: each initiation's TAI64N is newer
    for n in ("host-a", "host-b"):
        me = ca.identity(n, not_before=NOW - DAY)
        me = Identity(me.static_private, me.cert, me.ca, rv.Revocations(ca.cert))
        devs[n] = Device(me, RecordingDataPath(), lambda pkt, addr, n=n: wire.append((n, pkt)),
                         lambda: next(clock), quiet, accept_any=True)
    a, b = devs["host-a"], devs["host-b"]
    pb = b.add_peer(a.me.cert, ipaddress.IPv4Network("10.87.1.0/24"), [("192.0.2.1", 4787)])
    b.connect(pb, 0.0)
    a.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.2", 4787))], 0.1)
    b.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.1", 4787))], 0.2)
    assert a.peers["host-b"].session.current is not None and pb.session.current is not None
    return a, b, wire, clock


def test_a_new_blocklist_tears_down_the_session_and_the_handshake_is_refused():
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    slot = a.peers["host-b"].slot
    rx_index = a.peers["host-b"].session.current.local_index
    a.dp.calls.clear()
    assert a.me.revocations.offer(blocklist(ca, 2, {"host-b": NOW - 60}))
    assert a.apply_revocations(1.0) == ["host-b"]
    assert "host-b" not in a.peers and "host-b" in a.revoked
    # the keys left the C data path: receive index, send key, the peer's slot
    assert ("remove_rx", rx_index) in a.dp.calls and ("clear_tx_key", slot) in a.dp.calls
    assert ("remove_peer", slot) in a.dp.calls
    # host-b comes back with the same (revoked) certificate: refused, counted, no peer added
    b.rehandshake(b.peers["host-a"], 2.0)
    a.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.2", 4787))], 2.1)
    assert "host-b" not in a.peers and a.errors["revoked_cert"] == 1


def test_the_initiator_refuses_a_response_from_a_revoked_certificate():
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    assert b.me.revocations.offer(blocklist(ca, 2, fps=[a.me.cert.fingerprint]))
    pa = b.peers["host-a"]
    b.rehandshake(pa, 3.0)  # b's view was not refreshed yet: it asks, a answers with its cert
    a.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.2", 4787))], 3.1)
    b.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.1", 4787))], 3.2)
    assert b.errors["revoked_cert"] == 1


def test_re_enrolment_with_a_new_certificate_is_accepted_without_a_restart():
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    a.me.revocations.offer(blocklist(ca, 2, {"host-b": NOW - 60}))
    a.apply_revocations(1.0)
    new_b = ca.identity("host-b", not_before=NOW - 59)  # a new key, signed after the revocation
    quiet = Logger("t", stream=open("/dev/null", "w"))
    b2 = Device(new_b, RecordingDataPath(), lambda pkt, addr: wire.append(("host-b", pkt)), lambda: next(clock),
                quiet)
    b2.connect(b2.add_peer(a.me.cert, ipaddress.IPv4Network("10.87.1.0/24"), [("192.0.2.1", 4787)]), 5.0)
    a.on_control([ControlItem(CTRL_RAW, -1, wire.pop()[1], ("192.0.2.2", 4787))], 5.1)
    assert a.peers["host-b"].cert.fingerprint == new_b.cert.fingerprint and "host-b" not in a.revoked
    assert a.peers["host-b"].session.current is not None


def test_a_pinned_peer_loses_its_keys_but_stays():
    ca = TestCA()
    a, b, wire, clock = pair(ca)
    a.pinned = {"host-b"}
    a.me.revocations.offer(blocklist(ca, 2, {"host-b": NOW - 60}))
    assert a.apply_revocations(1.0) == ["host-b"]
    peer = a.peers["host-b"]
    assert peer.session.current is None and peer.last_error == "certificate revoked"
